"""The database layer every SQL-backed store kind shares."""
