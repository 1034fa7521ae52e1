"""``ccsr bench``: speed measurement of the pipeline as users run it (stages, FLOPs, memory, folder runs)."""
