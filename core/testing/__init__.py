"""Test helpers and conformance suites for denoisekit components (also for third-party plugins)."""
