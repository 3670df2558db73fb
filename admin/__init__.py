"""Operator web admin: its pages and their handlers, over the same services as the API."""
