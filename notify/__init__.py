"""Push and notices: WebSocket connection registry, Redis pub/sub fan-out, SMS / WeChat."""
