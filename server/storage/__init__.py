"""Storage: MongoDB collections and repositories, Redis keys and scripts."""
