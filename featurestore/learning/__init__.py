"""Learning from stored vectors: feature pipelines, training and evaluation, and the pictures of both."""
