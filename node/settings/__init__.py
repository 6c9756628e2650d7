"""Configuration: read once, at the edge, into frozen settings.

Sources, later ones winning: the embedded defaults (the same as ``config/node.toml``),
the TOML file given by ``--config`` or ``SUPPORT_NODE_CONFIG``, then environment
variables ``SUPPORT_NODE_<SECTION>_<KEY>`` (``SUPPORT_NODE_DIMSE_PORT=11113``;
``SUPPORT_NODE_STORE_OPTIONS_<KEY>`` for fsspec options). The home folder
(``--home`` / ``SUPPORT_NODE_HOME``, default ``./var``) holds the local store, the SQLite
index and the key file unless the config points elsewhere; relative paths in the config
are taken relative to it.

Unknown keys and bad values raise ``ConfigError`` naming the key.

The package, one concept a module: ``model`` (the frozen settings dataclasses),
``sources`` (the schema of keys, the file and environment layers, their merge and coercion),
``tables`` (the named tables: callers, destinations, recipes), ``validation`` (checks across
the built settings) and ``loading`` (``load``, which puts them together). Everything is
imported from ``node.settings``, as before the split.
"""

# __all__ is the public face. The underscored names lived in the single module before the
# split and stay reachable as node.settings._NAME (tests read _SCHEMA); patching one here
# does not reach load(): patch it in the submodule that uses it.
from node.settings.loading import _SECRET_OPTIONS as _SECRET_OPTIONS
from node.settings.loading import _dimse_tls as _dimse_tls
from node.settings.loading import _http as _http
from node.settings.loading import _receivers as _receivers
from node.settings.loading import _sqlite_under as _sqlite_under
from node.settings.loading import load
from node.settings.model import _AE as _AE
from node.settings.model import _HOSPITAL as _HOSPITAL
from node.settings.model import (
    RIGHTS,
    Caller,
    Destination,
    DimseSettings,
    DimseTlsSettings,
    HttpSettings,
    IndexSettings,
    IPNetwork,
    KeysSettings,
    LogSettings,
    PretrainSettings,
    ProcessingSettings,
    Secret,
    SegmentSettings,
    Settings,
    StoreSettings,
    TrainSettings,
    valid_hospital,
)
from node.settings.model import _is_loopback as _is_loopback
from node.settings.sources import _SCHEMA as _SCHEMA
from node.settings.sources import ENV_PREFIX
from node.settings.sources import _coerce as _coerce
from node.settings.sources import _env_layer as _env_layer
from node.settings.sources import _merge as _merge
from node.settings.sources import _merge_nested as _merge_nested
from node.settings.sources import _read_file as _read_file
from node.settings.sources import _under as _under
from node.settings.tables import _CALLER_KEYS as _CALLER_KEYS
from node.settings.tables import _callers as _callers
from node.settings.tables import _destinations as _destinations
from node.settings.tables import _fingerprint as _fingerprint
from node.settings.tables import _networks as _networks
from node.settings.tables import _recipes as _recipes
from node.settings.validation import _validate as _validate
from node.settings.validation import _validate_dimse_guards as _validate_dimse_guards

__all__ = [
    "ENV_PREFIX",
    "RIGHTS",
    "Caller",
    "Destination",
    "DimseSettings",
    "DimseTlsSettings",
    "HttpSettings",
    "IPNetwork",
    "IndexSettings",
    "KeysSettings",
    "LogSettings",
    "PretrainSettings",
    "ProcessingSettings",
    "Secret",
    "SegmentSettings",
    "Settings",
    "StoreSettings",
    "TrainSettings",
    "load",
    "valid_hospital",
]
