"""The deletion log, what earlier runs left in it, and the DPO report built from it."""
