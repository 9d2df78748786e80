"""The `voicemail` store kind: Asterisk's spool, one message at a time."""
