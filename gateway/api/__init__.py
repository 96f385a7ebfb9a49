"""HTTP layer: thin FastAPI routers over the gateway's parts."""
