"""Faithful stand-ins for external systems (station vendors, WeChat, payments, SMS).

Never imported by production code: started by `make run` and by test fixtures.
"""
