"""Answering queries: the FAISS index of a space, and search over it (resolve, search, name the hits)."""
