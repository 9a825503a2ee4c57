"""The ingest server: FastAPI/uvicorn WebSocket endpoint, durable journals, REST API."""
