"""What users bring: input files read into a validated ``Table``, and the versioned cleaning recipes."""
