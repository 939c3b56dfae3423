"""User-facing errors: each prints as one line naming what, where and how to fix it.

The CLI turns any :class:`DenoisekitError` into that line on stderr and exit status 2
(the traceback only with ``--debug``). Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class DenoisekitError(Exception):
    """Base class of errors caused by user input (recipes, files, plugins, data)."""


class RecipeError(DenoisekitError):
    """A recipe that cannot be read or does not validate."""


class RegistryError(DenoisekitError):
    """An unknown component, a duplicate registration or a component breaking its contract."""


class PluginLoadError(DenoisekitError):
    """A plugin that fails to import or to register."""


class ComponentError(DenoisekitError):
    """A component that fails to build, or breaks its contract in a run (a backbone's output
    shape); the message names the plugin that provides it."""


class DataError(DenoisekitError):
    """Missing, empty or unreadable training data."""


class CheckpointError(DenoisekitError):
    """A checkpoint that is missing, corrupt or does not match the run."""


class NonFiniteLossError(DenoisekitError):
    """Training produced a NaN or infinite loss; the last good checkpoint is kept."""


class OutputError(DenoisekitError):
    """An output that cannot be written (no space, a folder in the way), that would replace
    the user's files without ``--overwrite``, or a run folder another process is writing."""
