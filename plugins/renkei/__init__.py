"""Renkei (連携): privacy-preserving linkage of a city's departmental data.

The public surface a downstream service may import is re-exported here; everything else is
internal. Importing this package is cheap: no Airflow, GX, pandas or database imports.
"""

from renkei.errors import ConfigError, KeyRingError, RenkeiError, SourceError, ValidationFailed

__all__ = ["RenkeiError", "ConfigError", "KeyRingError", "SourceError", "ValidationFailed"]
__version__ = "0.1.0"
