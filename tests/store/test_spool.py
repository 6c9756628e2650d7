"""The local spool and its uploader, in one process: an instance acknowledged from the spool
is readable at once, reaches the store byte for byte, survives an upload that fails half-way,
and a newer version of a spooled object is never overwritten by the older spooled one."""

from __future__ import annotations

import io
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from node import wiring
from node.core import Core
from node.errors import StoreError
from node.ingest import Outcome, Source
from node.layout import DESCRIPTION, ORIGINAL
from node.settings import Settings
from node.store.spool import NotUploadedError, SpoolWriter
from node.store.uploader import Uploader
from pipelines import synthetic
from tests.fixtures.waiting import eventually

SOURCE = Source("default", "dimse", "PACS")


def _encoded(n: int, size: int = 64, seed: int = 0) -> list[bytes]:
    out = []
    for ds in synthetic.ct_series(n, size, seed=seed):
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        out.append(buf.getvalue())
    return out


@pytest.fixture
def serving(settings_factory: Callable[..., Settings]) -> Iterator[Callable[..., Core]]:
    """``serving(**store)``: a core as a receiver of ``serve`` opens it (acknowledging from
    the spool), on one home; closed after the test."""
    opened: list[Core] = []

    def make(**store: object) -> Core:
        settings = settings_factory({"store": store} if store else None)
        if not opened:
            wiring.open_core(settings, create_keys=True).close()
        core = wiring.open_core(settings, serving=True)
        opened.append(core)
        return core

    yield make
    for core in opened:
        core.close()


def _in_store(core: Core, key: str) -> bool:
    return bool(core.fs.fs.exists(core.fs._join(key)))


def _drain(core: Core) -> int:
    uploader = Uploader(core.fs, core.fs.spool)
    total = 0
    while moved := uploader.round():
        total += moved
    return total


def test_an_acknowledged_instance_is_read_from_the_spool_then_from_the_store(serving) -> None:
    core = serving()
    data = _encoded(6)
    results = [core.ingest.accept(d, SOURCE) for d in data]
    assert {r.outcome for r in results} == {Outcome.STORED}
    key = f"{results[2].object_key}/{ORIGINAL}"
    assert not _in_store(core, key)  # acknowledged before the store has it
    spool_dir = core.settings.home / "spool"
    segments = list(spool_dir.glob("*.seg"))
    assert segments and data[2] not in b"".join(p.read_bytes() for p in segments)  # no plaintext
    # every read path finds it: whole, streamed, a range, the description, the index
    assert core.fs.cat_file(key) == data[2]
    with core.fs.open(key, "rb") as fh:
        fh.seek(100)
        assert fh.read(50) == data[2][100:150]
    assert core.fs.cat_file(key, start=10, end=20) == data[2][10:20]
    description = core.fs.cat_file(f"{results[2].object_key}/{DESCRIPTION}").decode()
    assert results[2].sop_uid in description
    assert core.catalog.get_instance(results[2].sop_uid) is not None
    assert core.ingest.accept(data[2], SOURCE).outcome is Outcome.DUPLICATE

    assert _drain(core) == 12  # original and description of each
    assert _in_store(core, key) and core.fs.cat_file(key) == data[2]
    core.ingest.spool.close()  # the receiver stops: its last segment is released
    assert core.fs.spool.collect() >= 1
    assert not list(spool_dir.glob("*.seg"))


def test_an_upload_that_fails_half_way_loses_nothing_and_puts_no_duplicate(serving) -> None:
    core = serving()
    data = _encoded(8, seed=1)
    results = [core.ingest.accept(d, SOURCE) for d in data]
    put = core.fs.put_sealed
    calls = {"n": 0}

    def failing(path: str, blob: bytes) -> None:
        calls["n"] += 1
        if calls["n"] > 5:
            raise StoreError("store went away")
        put(path, blob)

    core.fs.put_sealed = failing  # type: ignore[method-assign]
    with pytest.raises(StoreError):
        Uploader(core.fs, core.fs.spool).round()
    assert core.fs.spool.rows.totals()[0] == 16  # nothing forgotten that was not confirmed
    core.fs.put_sealed = put  # type: ignore[method-assign]
    _drain(core)  # the next start puts them again, at the same paths
    for r, d in zip(results, data, strict=True):
        assert core.fs.cat_file(f"{r.object_key}/{ORIGINAL}") == d
    folder = Path(core.fs.root) / results[0].object_key
    assert sorted(p.name for p in folder.iterdir()) == [DESCRIPTION, ORIGINAL]  # no copies


def test_a_rewrite_of_a_spooled_description_is_never_overwritten_by_the_upload(serving) -> None:
    core = serving()
    result = core.ingest.accept(_encoded(1, seed=2)[0], SOURCE)
    key = f"{result.object_key}/{DESCRIPTION}"
    newer = b'{"rewritten": true}'
    core.fs.pipe_file(key, newer)  # a worker's update while the instance waits for upload
    _drain(core)
    assert core.fs.cat_file(key) == newer
    assert core.fs.cat_file(f"{result.object_key}/{ORIGINAL}") is not None


def test_appends_at_the_same_time_share_one_sync(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    writer = SpoolWriter(tmp_path / "spool")
    syncs = []
    real = os.fdatasync

    def slow_sync(fd: int) -> None:
        syncs.append(fd)
        threading.Event().wait(0.05)  # a slow disk: the others queue behind this one
        real(fd)

    monkeypatch.setattr(os, "fdatasync", slow_sync)
    barrier = threading.Barrier(8)

    def one(i: int) -> None:
        barrier.wait()
        with writer.spooled({f"a/b/c/d/{i}/{ORIGINAL}": bytes([i]) * 1000}) as entries:
            assert entries[0].length == 1000

    threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert 1 <= len(syncs) <= 3  # 8 appends, made durable by one or two shared syncs
    writer.close()


def test_a_segment_still_being_indexed_is_not_deleted(serving) -> None:
    core = serving()
    writer = core.ingest.spool
    with writer.spooled({f"h/p/s/r/x/{ORIGINAL}": b"x" * 100}):
        # appended and durable, its index write not yet done: held, so kept
        assert core.fs.spool.collect() == 0
        assert list((core.settings.home / "spool").glob("*.seg"))


def test_a_quiet_receivers_segment_is_let_go_and_deleted_once_uploaded(serving) -> None:
    """A receiver that gets nothing more lets its segment go after a while: once uploaded
    it is deleted, rather than kept until a segment's worth of instances has come (up to
    64 MiB of ciphertext, of instances that may have been deleted since)."""
    core = serving()
    core.ingest.spool.close()
    core.ingest.spool = SpoolWriter(core.settings.home / "spool", idle_seal_s=0.3)
    core.ingest.accept(_encoded(1, seed=10)[0], SOURCE)
    assert _drain(core) == 2
    spool_dir = core.settings.home / "spool"

    def let_go() -> bool:
        core.fs.spool.collect()
        return not list(spool_dir.glob("*.seg"))

    assert eventually(let_go, 10, every=0.1)
    # ... and the next instance goes into a new segment.
    data = _encoded(1, seed=11)[0]
    result = core.ingest.accept(data, SOURCE)
    assert core.fs.cat_file(f"{result.object_key}/{ORIGINAL}") == data
    assert len(list(spool_dir.glob("*.seg"))) == 1
    core.ingest.spool.close()


def test_the_spool_watermark_refuses_new_instances(serving) -> None:
    core = serving(spool_max_bytes=1)
    assert core.pressure is not None and core.pressure.state().ok
    core.ingest.accept(_encoded(1, seed=3)[0], SOURCE)
    core.pressure._at = float("-inf")  # read again now, not after the cache's second
    reading = core.pressure.state()
    assert not reading.ok and "spool" in (reading.reason or "")
    _drain(core)
    core.ingest.spool.close()
    core.fs.spool.collect()
    core.pressure._at = float("-inf")
    assert core.pressure.state().ok


def test_an_instance_spooled_before_a_key_rotation_is_uploaded_under_the_new_key(
        serving) -> None:
    from node.crypto.keyring import Keyring

    core = serving()
    result = core.ingest.accept(_encoded(1, seed=4)[0], SOURCE)
    key = f"{result.object_key}/{ORIGINAL}"
    assert core.fs.spool.locate(key) is not None
    _, new = Keyring.rotate(core.settings.keys.file)  # `keys rotate`, while it waits
    _drain(core)
    assert core.fs.key_id(key) == new.id  # the re-encryption pass could not have reached it
    assert core.fs.cat_file(key)[128:132] == b"DICM"


def test_rows_of_a_segment_this_spool_lacks_never_hold_up_its_own_uploads(serving) -> None:
    """Another node started from a copy of this home shares its spool id: its rows name
    segments that are not here. They are left for it; this spool's own still go up."""
    from datetime import UTC, datetime, timedelta

    from node.index.spooled import Spooled, insert_in

    core = serving()
    spool = core.fs.spool
    older = datetime.now(UTC) - timedelta(hours=1)  # listed first, as a blocker would be
    foreign = [Spooled(f"h/p/s/r/{i}/{ORIGINAL}", spool.id, "elsewhere-000001.seg", 0, 10)
               for i in range(70)]  # more than one round takes
    core.catalog.transaction("a copy's rows", lambda conn: insert_in(conn, foreign, older))
    result = core.ingest.accept(_encoded(1, seed=6)[0], SOURCE)
    _drain(core)
    assert _in_store(core, f"{result.object_key}/{ORIGINAL}")
    assert spool.rows.totals()[0] == 70  # left for their owner, not dropped


def _hand_to_another_node(core: Core, key: str) -> bytes:
    """Makes the row of ``key`` name another node's spool (nodes sharing one index), as
    that node's acknowledgement leaves it; returns its ciphertext, for that node's upload."""
    from sqlalchemy import update

    from node.index import schema

    entry = core.fs.spool.locate(key)
    assert entry is not None
    sealed = core.fs.spool.read(entry)
    stmt = update(schema.spooled).where(schema.spooled.c.path == key).values(spool="other-node")
    core.catalog.transaction("another node's row", lambda conn: conn.execute(stmt))
    return sealed


def test_a_read_of_another_nodes_spooled_object_waits_for_its_upload(serving) -> None:
    """A retrieve through one node right after another node acknowledged: the read waits
    for the other node's uploader instead of missing the instance."""
    core = serving(other_spool_wait=10.0)
    data = _encoded(1, seed=8)[0]
    key = f"{core.ingest.accept(data, SOURCE).object_key}/{ORIGINAL}"
    sealed = _hand_to_another_node(core, key)

    def other_uploader() -> None:  # the other node puts it, then deletes its row
        core.fs.put_sealed(key, sealed)
        core.fs.spool.rows.forget(key)

    timer = threading.Timer(0.5, other_uploader)
    started = time.monotonic()
    timer.start()
    try:
        assert core.fs.cat_file(key) == data
    finally:
        timer.join()
    assert 0.4 < time.monotonic() - started < 5


def test_a_node_that_never_uploads_fails_reads_after_the_wait_then_at_once(serving) -> None:
    core = serving(other_spool_wait=0.5)
    data = _encoded(3, seed=9)
    keys = [f"{core.ingest.accept(d, SOURCE).object_key}/{ORIGINAL}" for d in data]
    sealed = [_hand_to_another_node(core, key) for key in keys]

    started = time.monotonic()
    with pytest.raises(NotUploadedError):
        core.fs.cat_file(keys[0])
    assert time.monotonic() - started >= 0.5  # it waited
    started = time.monotonic()
    with pytest.raises(NotUploadedError):  # that node is stalled: no second wait
        with core.fs.open(keys[1], "rb") as fh:
            fh.read()
    assert time.monotonic() - started < 0.4
    # Back: what it has uploaded is read at once, stalled or not.
    core.fs.put_sealed(keys[2], sealed[2])
    core.fs.spool.rows.forget(keys[2])
    assert core.fs.cat_file(keys[2]) == data[2]
