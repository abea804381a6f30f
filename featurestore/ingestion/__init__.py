"""Writing vectors: an ingest's plan and its local execution, and the same on a Ray cluster."""
