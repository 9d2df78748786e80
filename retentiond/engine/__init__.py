"""Planning, applying and verifying a rule's runs; reconciliation, erasure, status."""
