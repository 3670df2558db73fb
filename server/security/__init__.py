"""Identity: principals and roles, access and refresh tokens, password hashing."""
