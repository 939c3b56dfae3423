"""The plugin module the ``denoisekit`` entry point names: one registration hook.

Kept free of heavy work: denoisekit imports it whenever it builds its plugin manager, and
the component modules are imported here only when the registry asks for the components.
"""

from __future__ import annotations

from denoisekit import ComponentSpec, hookimpl


@hookimpl
def denoisekit_components() -> list[ComponentSpec]:
    """Samplers ``euler`` and ``heun``, backbone ``tinyconv``, hook ``loss-by-sigma``."""
    from denoisekit_karras import backbone, hooks, sampler

    return [*sampler.SPECS, *backbone.SPECS, *hooks.SPECS]
