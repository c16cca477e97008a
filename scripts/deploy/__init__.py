"""Deployment: the Baseten management API, push, smoke test, promote, the deploy pipeline, the
production image check."""
