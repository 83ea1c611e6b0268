"""The one exception tree of Renkei.

    RenkeiError
     ├── ConfigError        a config/rule/suite file is invalid (names file, key and fix)
     ├── KeyRingError       the keyring is missing, unreadable, too open, or a token is bad
     ├── SourceError        a departmental source cannot be read at all
     └── ValidationFailed   a batch failed validation above the allowed rate; nothing loaded

Messages name the record (by pseudonymous key or row number), the rule and the fix — never a
value from a personal record. Row-level problems are not exceptions: they are quarantine
reasons (data).
"""


class RenkeiError(Exception):
    """Base class of every error Renkei raises on purpose."""


class ConfigError(RenkeiError):
    """A configuration file is invalid."""


class KeyRingError(RenkeiError):
    """The keyring cannot be used, or a token does not open under it."""


class SourceError(RenkeiError):
    """A departmental source cannot be read."""


class ValidationFailed(RenkeiError):
    """Too many rows of a batch failed validation: the batch is not loaded."""
