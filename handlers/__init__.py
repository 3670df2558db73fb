"""HTTP and WebSocket edge: parse, authorize, call one service, serialize.

Each module ends with its own ``default_handlers`` route list; ``server.app`` collects them.
"""
