"""``load``: the settings built from defaults, the config file, the environment and
command-line overrides, with paths taken under the home folder, then validated.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from node.errors import ConfigError
from node.settings.model import (
    DimseSettings,
    DimseTlsSettings,
    HttpSettings,
    IndexSettings,
    KeysSettings,
    LogSettings,
    PretrainSettings,
    ProcessingSettings,
    Secret,
    SegmentSettings,
    Settings,
    StoreSettings,
    TrainSettings,
)
from node.settings.sources import ENV_PREFIX, _env_layer, _merge, _read_file, _under
from node.settings.tables import _callers, _destinations, _recipes
from node.settings.validation import _validate

# Every spelling of a credential that node.store.backends accepts, so none shows in a repr.
_SECRET_OPTIONS = frozenset({
    "secret", "key", "password", "token", "session_token", "secret_key", "secret_access_key",
    "aws_secret_access_key", "aws_session_token", "access_key", "access_key_id",
    "aws_access_key_id",
})


def _dimse_tls(v: dict[str, Any], home: Path) -> DimseTlsSettings:
    files = {k: _under(home, v[k]) if v[k] else None for k in ("cert", "key", "ca")}
    for key, path in files.items():
        if path is not None and not path.is_file():
            raise ConfigError(f"dimse.tls.{key}: no such file {path}")
    return DimseTlsSettings(port=v["port"], require_client_cert=v["require_client_cert"],
                            **files)


def _http(v: dict[str, Any], dimse_host: str, home: Path) -> HttpSettings:
    origins = tuple(o.strip() for o in v["cors_origins"].split(",") if o.strip())
    return HttpSettings(
        enabled=v["enabled"], host=v["host"] or dimse_host, port=v["port"],
        allow_anonymous=v["allow_anonymous"],
        tls_cert=_under(home, v["tls_cert"]) if v["tls_cert"] else None,
        tls_key=_under(home, v["tls_key"]) if v["tls_key"] else None,
        cors_origins=origins, max_instance_bytes=v["max_instance_bytes"],
        viewer=v["viewer"],
        viewer_dir=_under(home, v["viewer_dir"]) if v["viewer_dir"] else None)


def _sqlite_under(home: Path, url: str) -> str:
    """A SQLite URL whose relative file path (``sqlite:///rel.db``) is taken under ``home``."""
    head, sep, path = url.partition(":///")
    if not sep or not head.startswith("sqlite") or path.startswith("/") or path in ("", ":memory:"):
        return url
    file, query_sep, query = path.partition("?")
    return f"{head}:///{_under(home, file)}{query_sep}{query}"


def _receivers(dimse: Mapping[str, Any]) -> int:
    """``dimse.workers``, with 0 (the default) as one receiving process per core: the
    GIL binds one process to one core. A port the OS picks (0) cannot be shared: one."""
    workers = int(dimse["workers"])
    if workers == 0:
        return 1 if dimse["port"] == 0 else max(1, len(os.sched_getaffinity(0)))
    return workers if workers > 0 else -1


def load(
    config: str | os.PathLike[str] | None = None,
    home: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> Settings:
    """Builds the settings from defaults, the config file, the environment and overrides.

    ``overrides`` (``{"dimse": {"port": 11113}}``) come from command-line options.
    Raises ConfigError naming the first bad key.
    """
    env = os.environ if environ is None else environ
    home_path = Path(home or env.get(ENV_PREFIX + "HOME") or "./var").expanduser().resolve()
    config = config or env.get(ENV_PREFIX + "CONFIG")
    file_data = _read_file(Path(config)) if config else {}
    env_values, env_options = _env_layer(env)
    for section, table in (overrides or {}).items():
        env_values.setdefault(section, {}).update({k: v for k, v in table.items() if v is not None})
    v = _merge(file_data, env_values)
    raw_options = file_data.get("store", {}).get("options", {})
    if not isinstance(raw_options, dict):
        raise ConfigError("store.options: expected a table")
    options = {**raw_options, **env_options}
    options = {k: Secret(x) if k in _SECRET_OPTIONS and isinstance(x, str) else x
               for k, x in options.items()}
    store_url = v["store"]["url"] or f"file://{home_path / 'store'}"
    if store_url.startswith("file://") and not store_url.startswith("file:///"):
        store_url = "file://" + str(_under(home_path, store_url[len("file://") :]))
    elif "://" not in store_url:  # a plain path, as config/node.toml allows
        store_url = "file://" + str(_under(home_path, store_url))
    index_url = _sqlite_under(home_path, v["index"]["url"] or "sqlite:///index.sqlite")
    settings = Settings(
        home=home_path,
        dimse=DimseSettings(**{**v["dimse"], "workers": _receivers(v["dimse"])},
                            callers=_callers(file_data),
                            tls=_dimse_tls(v["dimse.tls"], home_path)),
        store=StoreSettings(
            url=store_url, options=options, fsync=v["store"]["fsync"],
            chunk_size=v["store"]["chunk_size"], min_free_bytes=v["store"]["min_free_bytes"],
            ack=v["store"]["ack"], spool_max_bytes=v["store"]["spool_max_bytes"],
            upload_threads=v["store"]["upload_threads"],
            other_spool_wait=v["store"]["other_spool_wait"],
        ),
        index=IndexSettings(url=index_url),
        keys=KeysSettings(file=_under(home_path, v["keys"]["file"] or "keys.json"),
                          bits=v["keys"]["bits"]),
        log=LogSettings(level=v["log"]["level"].upper()),
        destinations=_destinations(file_data, home_path),
        http=_http(v["http"], v["dimse"]["host"], home_path),
        processing=ProcessingSettings(**v["processing"]),
        recipes=_recipes(file_data),
        segment=SegmentSettings(**v["segment"]),
        pretrain=PretrainSettings(**v["pretrain"]),
        train=TrainSettings(**v["train"]),
    )
    _validate(settings)
    return settings
