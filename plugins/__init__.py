"""The built-in plugins of denoisekit, registered by name (see denoisekit.plugin_manager)."""
