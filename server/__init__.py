"""Keyun core: configuration, app assembly, services, storage and the station exchange layer."""
