"""The built-in plugins of denoisekit, registered by name (see denoisekit.host.plugin_manager)."""
