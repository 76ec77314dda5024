"""What a study says, read-only: importance with intervals, the diagnostics beside it (range
advice, sensitivity, pruning), plots, and the report hpo.analyze writes (analysis.analyze)."""
