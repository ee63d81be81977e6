"""The backend service: ZeroMQ server, compute worker and avatar store."""
