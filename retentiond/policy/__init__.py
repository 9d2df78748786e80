"""Rules and cutoffs, subjects, anonymization transforms: pure values, no I/O."""
