"""The file-system layer every file-backed store kind shares."""
