"""Configuration as an operator meets it: defaults, the file, the environment, and refusals."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest

from node.access import AccessPolicy
from node.errors import ConfigError
from node.settings import Settings, load
from node.settings import sources as settings_sources

REPO = Path(__file__).resolve().parents[1]
SHIPPED_CONFIG = REPO / "config" / "node.toml"

Factory = Callable[..., Settings]


def test_defaults_with_no_file(tmp_path: Path) -> None:
    home = tmp_path / "home"
    s = load(home=home, environ={})
    assert s.home == home.resolve()
    assert (s.dimse.ae_title, s.dimse.host, s.dimse.port) == ("SUPPORT_NODE", "127.0.0.1", 11112)
    assert s.dimse.max_associations == 10
    assert s.dimse.allow_any_ae is False
    assert s.dimse.callers == ()
    assert s.store.url == f"file://{home.resolve() / 'store'}"
    assert s.store.options == {}
    assert s.index.url == f"sqlite:///{home.resolve() / 'index.sqlite'}"
    assert s.keys.file == home.resolve() / "keys.json"
    assert s.keys.bits == 128
    assert s.log.level == "INFO"


def test_home_comes_from_the_environment_when_not_given(tmp_path: Path) -> None:
    s = load(environ={"SUPPORT_NODE_HOME": str(tmp_path / "envhome")})
    assert s.home == (tmp_path / "envhome").resolve()


def test_file_values_are_used(settings_factory: Factory) -> None:
    s = settings_factory({
        "dimse": {"ae_title": "ARCHIVE_1", "port": 4242, "max_associations": 3},
        "store": {"url": "memory://cfg", "chunk_size": 65536, "fsync": False},
        "keys": {"bits": 256},
        "log": {"level": "debug"},
    })
    assert (s.dimse.ae_title, s.dimse.port, s.dimse.max_associations) == ("ARCHIVE_1", 4242, 3)
    assert (s.store.url, s.store.chunk_size, s.store.fsync) == ("memory://cfg", 65536, False)
    assert s.keys.bits == 256
    assert s.log.level == "DEBUG"


def test_config_file_named_by_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    path.write_text("[dimse]\nport = 2000\n")
    s = load(home=tmp_path / "home", environ={"SUPPORT_NODE_CONFIG": str(path)})
    assert s.dimse.port == 2000


def test_environment_wins_over_the_file(settings_factory: Factory) -> None:
    s = settings_factory(
        {"dimse": {"port": 4242}, "store": {"options": {"key": "from-file", "region": "eu"}}},
        env={"SUPPORT_NODE_DIMSE_PORT": "5151", "SUPPORT_NODE_STORE_OPTIONS_KEY": "from-env",
             "SUPPORT_NODE_DIMSE_ALLOW_ANY_AE": "yes"},
    )
    assert s.dimse.port == 5151
    assert s.dimse.allow_any_ae is True
    assert s.store.options["key"] == "from-env"
    assert s.store.options["region"] == "eu"


def test_command_line_overrides_win_over_the_environment(tmp_path: Path) -> None:
    s = load(home=tmp_path, environ={"SUPPORT_NODE_DIMSE_PORT": "5151"},
             overrides={"dimse": {"port": 6161, "host": None}})
    assert s.dimse.port == 6161
    assert s.dimse.host == "127.0.0.1"  # None means "not given on the command line"


@pytest.mark.parametrize(
    ("config", "env", "named"),
    [
        ({"dimse": {"prot": 11112}}, {}, "dimse.prot"),
        ({"dimsee": {"port": 11112}}, {}, "dimsee"),
        ({}, {"SUPPORT_NODE_DIMSE_PROT": "1"}, "SUPPORT_NODE_DIMSE_PROT"),
        ({}, {"SUPPORT_NODE_STORAGE_URL": "x"}, "SUPPORT_NODE_STORAGE_URL"),
        ({"dimse": {"port": "eleven"}}, {}, "dimse.port"),
        ({}, {"SUPPORT_NODE_DIMSE_MAX_ASSOCIATIONS": "ten"}, "dimse.max_associations"),
        ({"dimse": {"allow_any_ae": "maybe"}}, {}, "dimse.allow_any_ae"),
        ({}, {"SUPPORT_NODE_STORE_FSYNC": "sometimes"}, "store.fsync"),
        ({"dimse": {"port": 70000}}, {}, "dimse.port"),
        ({"keys": {"bits": 192}}, {}, "keys.bits"),
        ({"log": {"level": "LOUD"}}, {}, "log.level"),
        ({"dimse": {"workers": -1}}, {}, "dimse.workers"),
        ({"dimse": {"workers": 2, "port": 0}}, {}, "dimse.workers"),
        ({"dimse": {"callers": {"CT1": {"hospitl": "a"}}}}, {}, "dimse.callers.CT1"),
        ({"dimse": {"callers": {"CT1": {"hospital": "St Mary's"}}}}, {},
         "dimse.callers.CT1.hospital"),
        ({"processing": {"workers": -1}}, {}, "processing.workers"),
        ({}, {"SUPPORT_NODE_PROCESSING_FILTER_VARIANCE": "1.5"}, "processing.filter_variance"),
        ({}, {"SUPPORT_NODE_PROCESSING_FILTER_VARIANCE": "most"}, "processing.filter_variance"),
        ({"processing": {"recipe": "ct-soft"}}, {}, "no recipe called 'ct-soft'"),
        ({"recipes": {"ct": {"sise": 256}}}, {}, "recipes.ct: recipe: unknown key 'sise'"),
        ({"recipes": {"ct": {"size": 4}}}, {}, "recipes.ct"),
        ({"recipes": {"ct": {"window": [40]}}}, {}, "recipes.ct"),
    ],
)
def test_bad_configuration_names_the_key(settings_factory: Factory, config: dict[str, object],
                                         env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError) as info:
        settings_factory(config or None, env=env)
    assert named in str(info.value)


@pytest.mark.parametrize("line", ["port = 11112.5", "port = true", 'port = "11112x"'])
def test_non_integer_port_in_toml_names_the_key(tmp_path: Path, line: str) -> None:
    path = tmp_path / "node.toml"
    path.write_text(f"[dimse]\n{line}\n")
    with pytest.raises(ConfigError, match=r"dimse\.port"):
        load(config=path, home=tmp_path, environ={})


def test_invalid_toml_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    path.write_text("[dimse\nport = 1\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load(config=path, home=tmp_path, environ={})


def test_missing_config_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load(config=tmp_path / "nope.toml", home=tmp_path, environ={})


def test_public_bind_without_allow_list_refuses_to_start(settings_factory: Factory) -> None:
    with pytest.raises(ConfigError, match=r"dimse\.host"):
        settings_factory({"dimse": {"host": "0.0.0.0"}})
    with pytest.raises(ConfigError, match=r"dimse\.host"):
        settings_factory(env={"SUPPORT_NODE_DIMSE_HOST": "192.0.2.10"})


def test_public_bind_allowed_on_purpose_or_with_callers(settings_factory: Factory) -> None:
    anyone = settings_factory({"dimse": {"host": "0.0.0.0", "allow_any_ae": True}}, name="a")
    assert AccessPolicy(anyone.dimse).for_ae("WHOEVER").hospital == "default"
    listed = settings_factory(
        {"dimse": {"host": "0.0.0.0", "callers": {"CT1": {"hospital": "st-marys"}}}}, name="b")
    assert listed.dimse.host == "0.0.0.0"
    assert AccessPolicy(listed.dimse).for_ae("WHOEVER").hospital is None


def test_hospital_for_maps_calling_ae_titles(settings_factory: Factory) -> None:
    s = settings_factory({"dimse": {"callers": {
        "CT1": {"hospital": "st-marys"},
        "MR_2": {"hospital": "general"},
    }}})
    d = s.dimse
    assert AccessPolicy(d).for_ae("CT1").hospital == "st-marys"
    assert AccessPolicy(d).for_ae("CT1  ").hospital == "st-marys"  # AE titles arrive space-padded
    assert AccessPolicy(d).for_ae("MR_2").hospital == "general"
    assert AccessPolicy(d).for_ae("ct1").hospital is None  # AE titles are case-sensitive
    assert AccessPolicy(d).for_ae("UNKNOWN").hospital is None  # a list is set: others are refused
    with_any = settings_factory({"dimse": {"allow_any_ae": True,
                                           "callers": {"CT1": {"hospital": "st-marys"}}}},
                                name="any")
    assert AccessPolicy(with_any.dimse).for_ae("CT1").hospital == "st-marys"
    assert AccessPolicy(with_any.dimse).for_ae("UNKNOWN").hospital == "default"


def test_loopback_with_no_list_accepts_any_caller_as_default(settings_factory: Factory) -> None:
    assert AccessPolicy(settings_factory().dimse).for_ae("ANYONE").hospital == "default"


@pytest.mark.parametrize("option", ["secret", "key", "secret_key", "secret_access_key",
                                    "aws_secret_access_key", "password", "token"])
def test_store_secrets_are_masked_in_repr(settings_factory: Factory, option: str) -> None:
    secret = "s3cr3t-Value-Never-Shown"
    s = settings_factory({"store": {"options": {option: secret,
                                                "endpoint_url": "http://127.0.0.1:1"}}})
    assert s.store.options[option] == secret  # still usable
    assert secret not in repr(s)
    assert secret not in str(s)
    assert "http://127.0.0.1:1" in repr(s)  # non-secret options stay readable


def test_secret_from_environment_is_masked(settings_factory: Factory) -> None:
    secret = "EnvSecret-9f8e7d"
    s = settings_factory(env={"SUPPORT_NODE_STORE_OPTIONS_SECRET": secret})
    assert s.store.options["secret"] == secret
    assert secret not in repr(s)


def test_index_password_is_not_in_repr(settings_factory: Factory) -> None:
    s = settings_factory({"index": {"url": "postgresql://node:Pa55-w0rd-xyz@db:5432/node"}})
    assert s.index.url.endswith("@db:5432/node")
    assert "Pa55-w0rd-xyz" not in repr(s)


def test_relative_paths_resolve_under_home(settings_factory: Factory, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # so that "relative to the working folder" would differ
    home = (tmp_path / "home").resolve()
    s = settings_factory({"keys": {"file": "secrets/keys.json"},
                          "store": {"url": "file://objects"},
                          "index": {"url": "sqlite:///db/index.sqlite"}})
    assert s.keys.file == home / "secrets" / "keys.json"
    assert s.store.url == f"file://{home / 'objects'}"
    assert s.index.url == f"sqlite:///{home / 'db' / 'index.sqlite'}"
    plain = settings_factory({"store": {"url": "objects"}}, name="home")
    assert plain.store.url == f"file://{home / 'objects'}"


def test_absolute_paths_are_kept(settings_factory: Factory, tmp_path: Path) -> None:
    s = settings_factory({"keys": {"file": str(tmp_path / "k.json")},
                          "store": {"url": f"file://{tmp_path / 'st'}"},
                          "index": {"url": f"sqlite:///{tmp_path / 'i.sqlite'}"}})
    assert s.keys.file == tmp_path / "k.json"
    assert s.store.url == f"file://{tmp_path / 'st'}"
    assert s.index.url == f"sqlite:///{tmp_path / 'i.sqlite'}"


def test_settings_are_frozen(settings_factory: Factory) -> None:
    s = settings_factory()
    with pytest.raises(AttributeError):
        s.dimse.port = 1  # type: ignore[misc]


def test_shipped_config_loads_and_equals_the_defaults(tmp_path: Path) -> None:
    documented = load(config=SHIPPED_CONFIG, home=tmp_path, environ={})
    assert documented == load(home=tmp_path, environ={})


def _sections(text: str) -> dict[str, str]:
    """The text under each [section] header of a TOML file, commented lines included."""
    out: dict[str, str] = {}
    name = ""
    for line in text.splitlines():
        header = re.fullmatch(r"\s*#?\s*\[([A-Za-z0-9_.]+)\]\s*", line)
        if header:
            name = header.group(1)
            out.setdefault(name, "")
            continue
        out[name] = out.get(name, "") + line + "\n"
    return out


def test_shipped_config_documents_every_key() -> None:
    sections = _sections(SHIPPED_CONFIG.read_text())
    for section, keys in settings_sources._SCHEMA.items():
        assert section in sections, f"[{section}] missing from config/node.toml"
        for key in keys:
            assert re.search(rf"^\s*#?\s*{key}\s*=", sections[section], re.M), \
                f"{section}.{key} is not documented in config/node.toml"
    assert "store.options" in sections
    assert any(name.startswith("dimse.callers.") for name in sections)
    assert re.search(r"^\s*#?\s*hospital\s*=", sections[next(
        n for n in sections if n.startswith("dimse.callers."))], re.M)


def test_recipes_are_named_sections_with_a_default(settings_factory: Factory) -> None:
    settings = settings_factory({"recipes": {"ct-soft": {"version": 3, "size": 256,
                                                         "window": [40, 400]}},
                                 "processing": {"recipe": "ct-soft", "workers": 0}},
                                env={"SUPPORT_NODE_PROCESSING_BATCH": "16"})
    chosen = settings.recipe()
    assert (chosen.name, chosen.version, chosen.size, chosen.window) == (
        "ct-soft", "3", 256, (40.0, 400.0))
    assert chosen.recipe_id.startswith("ct-soft@3#")
    assert settings.recipe("default").size == 512  # the built-in stays available
    assert (settings.processing.workers, settings.processing.batch) == (0, 16)
