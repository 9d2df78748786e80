"""The `csv` store kind: Asterisk's Master.csv call list."""
