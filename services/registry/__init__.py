"""Registry service: the household register."""
