"""NxD's `utils` package: only the platform enum that parallel-state signatures name."""
