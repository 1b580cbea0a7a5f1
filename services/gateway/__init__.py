"""Gateway: the only entry from outside (authentication and scoping arrive in their own issue)."""
