"""Two receiving processes, one SOP Instance UID, different bytes, at the same moment.

The review saw one sender get success while its bytes were gone: both processes wrote the
same path, the index kept one hash and the object held the other's bytes. Now the UID is
held across write and index, between processes too: whichever wins is stored with its own
hash, the other is kept apart as a conflict, and nothing is lost.
"""

from __future__ import annotations

import hashlib
import multiprocessing as mp
from pathlib import Path

from node.api import Node
from node.settings import Settings, load
from pipelines import synthetic

ROUNDS = 40


def _instances(folder: Path, variant: int) -> list[bytes]:
    """ROUNDS instances whose UIDs are the same in both variants, pixels differ."""
    out = []
    for i in range(ROUNDS):
        ds = synthetic.ct_study(synthetic.Patient("RACE-1", "Race^R"), series=1,
                                per_series=1, size=64, seed=1000 * variant + i)[0]
        ds.StudyInstanceUID = f"1.2.3.4.{i}"
        ds.SeriesInstanceUID = f"1.2.3.4.{i}.1"
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = f"1.2.3.4.{i}.1.1"
        out.append(synthetic.write(ds, folder / str(variant), f"{i}.dcm").read_bytes())
    return out


def _sender(home: str, variant: int, folder: str, start: mp.Barrier, results: mp.Queue
            ) -> None:
    settings = load(home=Path(home), environ={})
    node = Node.from_settings(settings)
    data = _instances(Path(folder), variant)
    outcomes = []
    start.wait()
    for item in data:
        outcomes.append(node.write(item).outcome.value)
    node.close()
    results.put((variant, (outcomes, {hashlib.sha256(d).hexdigest() for d in data})))


def test_two_processes_racing_on_one_uid_lose_nothing(settings_factory, tmp_path: Path
                                                      ) -> None:
    settings: Settings = settings_factory()
    Node.from_settings(settings, create_keys=True).close()
    ctx = mp.get_context("spawn")
    start, results = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_sender, args=(str(settings.home), v, str(tmp_path), start,
                                               results)) for v in (1, 2)]
    for p in procs:
        p.start()
    got = dict(results.get(timeout=300) for _ in procs)
    for p in procs:
        p.join(60)
    sent = {v: got[v][1] for v in got}
    node = Node.from_settings(settings)
    try:
        records = list(node.ls())
        assert len(records) == ROUNDS
        conflicts = node.core.catalog.conflicts()
        for rec in records:  # the stored object is what the index says it is
            stored = hashlib.sha256(node.core.fs.cat_file(f"{rec.object_key}/original.dcm"))
            assert stored.hexdigest() == rec.sha256, rec.sop_uid
        kept = {rec.sha256 for rec in records} | {c.sha256 for c in conflicts}
        assert sent[1] | sent[2] <= kept  # every sender's bytes are somewhere
        for c in conflicts:
            data = node.core.fs.cat_file(f"{c.object_key}/original.dcm")
            assert hashlib.sha256(data).hexdigest() == c.sha256
        assert sorted(got) == [1, 2] and all(o in ("stored", "conflict") for v in got
                                             for o in got[v][0])
    finally:
        node.close()
