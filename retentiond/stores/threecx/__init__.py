"""The `threecx_calls` store kind: 3CX's call history in PostgreSQL."""
