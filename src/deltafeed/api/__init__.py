"""Serving candles to consumers: the fan-out hub, WebSocket and HTTP endpoints, auth and metrics."""
