"""Errors raised by the device runtime (torch-free)."""


class EdgesegError(Exception):
    """Base class for every error caused by bad input; the CLI prints these as one line."""


class InputError(EdgesegError, ValueError):
    """An array passed to the runtime API has the wrong dtype, shape or channel count."""


class BundleError(EdgesegError):
    """A bundle that is missing, tampered with, or of an unknown schema version."""
