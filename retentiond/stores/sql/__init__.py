"""The `sql` store kind: rows of a PBX table, deleted or anonymized in batches (`store.SqlStore`;
its parts are listed in store.py's docstring)."""
