"""The built-in autoencoder plugins."""
