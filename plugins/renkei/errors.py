"""The one exception tree of Renkei.

    RenkeiError
     ├── ConfigError        a config/rule/suite file is invalid (names file, key and fix)
     ├── KeyRingError       the keyring is missing, unreadable, too open, or a token is bad
     │    ├── KeyRetired          a token's key version is retired (or its grace period ended)
     │    └── RotationInProgress  the warehouse is being re-sealed under a new link key version
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


class KeyRetired(KeyRingError):
    """A token was sealed under a key version the keyring no longer accepts."""


class RotationInProgress(KeyRingError):
    """The warehouse's ERKs are being re-sealed (or the keyring and warehouse disagree on the
    link key version): writers of ERKs must wait until the rotation completes."""


class SourceError(RenkeiError):
    """A departmental source cannot be read."""


class ValidationFailed(RenkeiError):
    """Too many rows of a batch failed validation: the batch is not loaded."""
