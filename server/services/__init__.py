"""Domain services: plain async code over storage; the API edge calls exactly one of them."""
