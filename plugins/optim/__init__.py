"""Built-in optim plugins."""
