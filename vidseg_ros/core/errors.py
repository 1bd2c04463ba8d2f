"""Errors raised on bad input. Messages are one line and name the problem."""


class VidsegError(Exception):
    """Base class: bad input or configuration, reported to the user as ``error: <message>``."""


class InputError(VidsegError):
    """Unreadable, missing or unsupported input (files, images, messages)."""


class ModelError(VidsegError):
    """Wrong, missing or corrupt weights / model configuration."""


class ConfigError(VidsegError):
    """Unknown or out-of-range parameter."""
