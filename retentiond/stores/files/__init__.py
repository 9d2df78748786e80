"""The `files` store kind: recordings and other files, with their database references."""
