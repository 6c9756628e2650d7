"""The raw layers of configuration and their merge: the schema of keys with their types and
defaults, the TOML file, the ``SUPPORT_NODE_<SECTION>_<KEY>`` environment variables, merged
(later ones winning) and coerced to each key's type. Unknown keys raise ``ConfigError``.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from node.errors import ConfigError

ENV_PREFIX = "SUPPORT_NODE_"


# The schema: section -> key -> (type, default). Defaults that depend on home are None.
_SCHEMA: dict[str, dict[str, tuple[type, Any]]] = {
    "dimse": {
        "ae_title": (str, "SUPPORT_NODE"),
        "host": (str, "127.0.0.1"),
        "port": (int, 11112),
        "max_associations": (int, 10),
        "allow_any_ae": (bool, False),
        "max_pdu": (int, 1048576),
        "network_timeout": (int, 60),
        "workers": (int, 0),  # 0: one per core (one when the port is 0)
        "association_request_timeout": (float, 5.0),
        "max_connections_per_address": (int, 10),
        "any_ae_rights": (tuple, ("store",)),
        "max_instance_bytes": (int, 2 << 30),
    },
    "dimse.tls": {
        "port": (int, 2762),
        "cert": (str, ""),
        "key": (str, ""),
        "ca": (str, ""),
        "require_client_cert": (bool, False),
    },
    "http": {
        "enabled": (bool, True),
        "host": (str, None),  # default: the DIMSE host
        "port": (int, 8042),
        "allow_anonymous": (bool, False),
        "tls_cert": (str, ""),
        "tls_key": (str, ""),
        "cors_origins": (str, ""),  # comma-separated origins; empty: CORS off
        "max_instance_bytes": (int, 2 << 30),
        "viewer": (bool, True),
        "viewer_dir": (str, ""),
    },
    "store": {
        "url": (str, None),
        "fsync": (bool, True),
        "chunk_size": (int, 1048576),
        "min_free_bytes": (int, 2 << 30),
        "ack": (str, "spool"),
        "spool_max_bytes": (int, 8 << 30),
        "upload_threads": (int, 8),
        "other_spool_wait": (float, 30.0),
    },
    "index": {"url": (str, None)},
    "keys": {"file": (str, None), "bits": (int, 128)},
    "log": {"level": (str, "INFO")},
    "processing": {
        "workers": (int, 1),
        "recipe": (str, "default"),
        "batch": (int, 4),
        "poll_ms": (int, 250),
        "lease_seconds": (int, 300),
        "max_attempts": (int, 3),
        "filter_downsample": (int, 64),
        "filter_variance": (float, 0.95),
        "filter_min_images": (int, 64),
        "max_pixels": (int, 1 << 28),
        "max_queue": (int, 100000),
    },
    "segment": {
        "model": (str, ""),
        "quiet_seconds": (int, 60),
        "device": (str, "cpu"),
    },
    "pretrain": {
        "every": (int, 0),
        "arch": (str, "unet"),
        "clusters": (int, 50),
        "epochs": (int, 10),
        "size": (int, 128),
        "device": (str, "cpu"),
    },
    "train": {
        "size": (int, 128),
        "epochs": (int, 10),
    },
}


def _coerce(name: str, kind: type, value: Any) -> Any:
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{name}: expected true or false, got {value!r}")
    if kind is tuple:  # a list of strings; a comma-separated string from the environment
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, list | tuple) or not all(isinstance(i, str) for i in items):
            raise ConfigError(f"{name}: expected a list of strings, got {value!r}")
        return tuple(i.strip() for i in items if i.strip())
    if kind is float:
        if isinstance(value, bool):
            raise ConfigError(f"{name}: expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{name}: expected a number, got {value!r}") from None
    if kind is int:
        if isinstance(value, bool | float):  # int(11112.5) would quietly drop the .5
            raise ConfigError(f"{name}: expected an integer, got {value!r}")
        try:
            return int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{name}: expected an integer, got {value!r}") from None
    if not isinstance(value, str):
        raise ConfigError(f"{name}: expected a string, got {value!r}")
    return value


def _read_file(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None


def _env_layer(environ: Mapping[str, str]) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    values: dict[str, dict[str, Any]] = {}
    options: dict[str, str] = {}
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX) or name in (ENV_PREFIX + "HOME", ENV_PREFIX + "CONFIG"):
            continue
        rest = name[len(ENV_PREFIX) :].lower()
        if rest.startswith("store_options_"):
            options[rest[len("store_options_") :]] = value
            continue
        for section, keys in _SCHEMA.items():
            key = rest[len(section) + 1 :]
            if rest.startswith(section.replace(".", "_") + "_") and key in keys:
                values.setdefault(section, {})[key] = value
                break
        else:
            raise ConfigError(f"{name}: unknown configuration variable")
    return values, options


def _merge(file_data: dict[str, Any], env: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    merged: dict[str, dict[str, Any]] = {s: {} for s in _SCHEMA}
    for section, table in file_data.items():
        if section in ("destinations", "recipes"):
            continue
        if section not in _SCHEMA or "." in section:
            raise ConfigError(f"[{section}]: unknown configuration section")
        if not isinstance(table, dict):
            raise ConfigError(f"[{section}]: expected a table")
        for key, value in table.items():
            if section == "dimse" and key == "callers":
                continue
            if section == "dimse" and key == "tls":
                _merge_nested("dimse.tls", value, merged)
                continue
            if section == "store" and key == "options":
                continue
            if key not in _SCHEMA[section]:
                raise ConfigError(f"{section}.{key}: unknown configuration key")
            merged[section][key] = value
    for section, table in env.items():
        merged[section].update(table)
    resolved: dict[str, dict[str, Any]] = {}
    for section, keys in _SCHEMA.items():
        resolved[section] = {}
        for key, (kind, default) in keys.items():
            value = merged[section].get(key, default)
            name = f"{section}.{key}"
            resolved[section][key] = None if value is None else _coerce(name, kind, value)
    return resolved


def _merge_nested(section: str, table: Any, merged: dict[str, dict[str, Any]]) -> None:
    """A table inside a section (``[dimse.tls]``) that has keys of its own in _SCHEMA."""
    if not isinstance(table, dict):
        raise ConfigError(f"[{section}]: expected a table")
    for key, value in table.items():
        if key not in _SCHEMA[section]:
            raise ConfigError(f"{section}.{key}: unknown configuration key")
        merged[section][key] = value


def _under(home: Path, value: str) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else home / path
