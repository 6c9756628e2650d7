"""The web edge under index failure, CORS, and the one error table."""

from __future__ import annotations

import io
import sqlite3

import requests

from node import access, errors
from node.index import query
from node.web import errors as web_errors
from pipelines import synthetic
from tests.web.conftest import WebNode, stow


def _db(web: WebNode) -> sqlite3.Connection:
    return sqlite3.connect(web.settings.home / "index.sqlite", isolation_level=None)


def _instance(seed: int = 1) -> bytes:
    ds = next(synthetic.ct_series(1, size=32, seed=seed))
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def test_stow_while_the_index_fails_is_503_and_a_retry_succeeds(web_node: WebNode) -> None:
    with _db(web_node) as db:
        db.execute("CREATE TRIGGER fail BEFORE INSERT ON instances "
                   "BEGIN SELECT RAISE(ABORT, 'simulated index failure'); END")
    data = _instance()
    r = stow(web_node.url, [data])
    assert r.status_code == 503 and r.headers["retry-after"]
    assert r.json()["00081198"]["Value"][0]["00081197"]["Value"] == [0xA700]
    assert list(web_node.node.ls()) == []
    assert web_node.node.objects() == []  # nothing half-written is left
    with _db(web_node) as db:
        db.execute("DROP TRIGGER fail")
    assert stow(web_node.url, [data]).status_code == 200


def test_qido_while_the_index_is_away_is_503(web_node: WebNode) -> None:
    with _db(web_node) as db:
        db.execute("ALTER TABLE studies RENAME TO studies_away")
    try:
        r = requests.get(web_node.url + "/studies", timeout=10)
        assert r.status_code == 503 and r.headers["retry-after"]
        assert "error" in r.json()
    finally:
        with _db(web_node) as db:
            db.execute("ALTER TABLE studies_away RENAME TO studies")
    assert requests.get(web_node.url + "/studies", timeout=10).status_code == 200


def test_cors_is_off_unless_origins_are_listed(web_factory) -> None:  # type: ignore[no-untyped-def]
    plain = web_factory(name="plain")
    preflight = {"Origin": "https://viewer.example", "Access-Control-Request-Method": "GET"}
    r = requests.options(plain.url + "/studies", headers=preflight, timeout=10)
    assert "access-control-allow-origin" not in r.headers
    listed = web_factory({"http": {"cors_origins": "https://viewer.example"}}, name="cors")
    r = requests.options(listed.url + "/studies", headers=preflight, timeout=10)
    assert r.headers.get("access-control-allow-origin") == "https://viewer.example"
    other = {**preflight, "Origin": "https://elsewhere.example"}
    r = requests.options(listed.url + "/studies", headers=other, timeout=10)
    assert r.headers.get("access-control-allow-origin") != "https://elsewhere.example"


def test_every_error_has_its_http_status() -> None:
    expected = {
        web_errors.BadRequest: 400, query.QueryLevelError: 400, query.QueryValueError: 400,
        errors.MalformedError: 400, errors.InconsistentError: 400,
        access.NotAuthenticatedError: 401, access.NotAllowedError: 403,
        web_errors.NotFound: 404, FileNotFoundError: 404, web_errors.Conflict: 409,
        web_errors.UnsupportedMediaType: 415, errors.IntegrityError: 500,
        errors.StoreError: 503, errors.CatalogError: 503, errors.ConfigError: 500,
        errors.KeyringError: 500, errors.LibraryError: 500,
    }
    for kind, status in expected.items():
        exc = kind(["x"]) if kind is web_errors.NotAcceptable else kind("x")
        assert web_errors.status_for(exc) == status, kind
    assert web_errors.status_for(web_errors.NotAcceptable(["image/png"])) == 406
    # every NodeError subclass the node defines lands on a row of the table
    def subclasses(cls: type) -> set[type]:
        out = set(cls.__subclasses__())
        for sub in list(out):
            out |= subclasses(sub)
        return out
    for kind in subclasses(errors.NodeError):
        assert any(issubclass(kind, row) for row, _ in web_errors.STATUS), kind
