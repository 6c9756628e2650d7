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

# __all__ is the public face: everything is imported from node.settings.
from node.settings.loading import load
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
from node.settings.sources import ENV_PREFIX

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
