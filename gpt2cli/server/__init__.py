"""`gpt2cli serve`: the HTTP server (FastAPI + uvicorn) over one engine thread."""
