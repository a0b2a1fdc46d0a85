"""Small helpers every layer may use and that import nothing of ours: deadlines, progress bars, kept
artifacts."""
