"""Proving a winner: paired-seed validation on the test split (validation.validate), its
statistics (stats, sequential) and report, and the replay of a stored trial."""
