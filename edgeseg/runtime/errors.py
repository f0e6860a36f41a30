"""Errors raised by the device runtime (torch-free)."""


class EdgesegError(Exception):
    """Base class for every error caused by bad input; the CLI prints these as one line."""


class InputError(EdgesegError, ValueError):
    """An array passed to the runtime API has the wrong dtype, shape or channel count."""


class BundleError(EdgesegError):
    """A bundle that is missing, tampered with, or of an unknown schema version."""


class MissingDependency(EdgesegError):
    """An optional library the requested feature needs (tensorrt, cuda-python, ...) is missing;
    the message names what to install. The toolkit's ``DependencyError`` is a subclass."""
