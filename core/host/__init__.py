"""The host: plugin manager, registry, contract checks and recipes."""
