"""Errors that the CLI turns into a one-line message and a non-zero exit instead of a traceback."""


class SVLMError(Exception):
    """Base class: anything a user can fix by changing input, config or environment."""


class ConfigError(SVLMError):
    """A config file or override is invalid (unknown key, wrong type, impossible setting)."""


class DataError(SVLMError):
    """A dataset on disk is missing, malformed or inconsistent."""
