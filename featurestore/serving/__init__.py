"""``fs serve``: the HTTP server (FastAPI) and its search page."""
