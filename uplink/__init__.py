"""The uplink: bounded ring buffer and the reconnecting, resuming WebSocket client."""
