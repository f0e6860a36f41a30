"""The one error hierarchy of edgeseg.

Every error a user can cause by giving bad input is an ``EdgesegError``; the CLI prints it
as one line and exits non-zero. Anything else is a bug and keeps its traceback.

The device runtime has its own copy of the base classes in ``edgeseg.runtime.errors``
(it must not import the toolkit half); these subclass those so one ``except`` catches both.
"""

from edgeseg.runtime.errors import BundleError, EdgesegError, InputError, MissingDependency

__all__ = [
    "EdgesegError",
    "InputError",
    "BundleError",
    "DataError",
    "ModelError",
    "ConfigError",
    "DependencyError",
]


class DataError(EdgesegError):
    """An image/mask folder, split file or image that cannot be used."""


class ModelError(EdgesegError):
    """A checkpoint that is missing, corrupt or not a SegFormer."""


class ConfigError(EdgesegError):
    """Options that are unknown, out of range or conflicting."""


class DependencyError(MissingDependency):
    """An optional dependency that the requested feature needs is not installed (the runtime
    raises its base class, ``MissingDependency``; ``except MissingDependency`` catches both)."""
