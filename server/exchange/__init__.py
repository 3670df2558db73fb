"""Station exchange layer: one normalized interface to every station system.

Vendor field names never leave ``adapters/``; everything above talks in the glossary's terms.
"""
