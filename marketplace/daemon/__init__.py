"""The paid-inference daemon: FastAPI app that checks payments and proxies calls to models."""
