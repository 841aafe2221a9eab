"""What every job runs on: the distribution strategy (who is the chief),
user errors, atomic file writes and experiment tracking."""
