"""Built-in hooks plugins."""
