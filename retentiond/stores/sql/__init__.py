"""The `sql` store kind: rows of a PBX table, deleted or anonymized in batches."""
