"""Operating a worker: health, the HTTP server, status, the event loop."""
