"""After a fault scenario: is every acknowledged instance there, once, whole and processed?

Run with the node stopped (or idle): opens the home's index and store itself, reads back
every acknowledged instance, and runs ``support-node verify`` as an operator would.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from bench.faults_env import SUPPORT_NODE, clean_env
from node.api import Node
from node.dicom.structure import split_part10
from node.index.jobs import JobQueue
from node.index.records import State
from node.settings import Settings, load

DONE = (State.PROCESSED, State.NOT_IMAGE)


@dataclass
class Findings:
    acknowledged: int = 0
    present: int = 0  # indexed, and its original decrypts and matches what was sent
    duplicates: int = 0  # a second folder or a conflict copy of an acknowledged instance
    processed: int = 0  # processing recorded once, its output there, no job left
    verify_problems: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        n = self.acknowledged
        return (self.present == n and self.duplicates == 0 and self.processed == n
                and self.verify_problems == 0)


def settings_for(home: Path, env: dict[str, str]) -> Settings:
    return load(home=home, environ={k: v for k, v in env.items()
                                    if k.startswith("SUPPORT_NODE_")})


def dataset_digest(data: bytes) -> str:
    offset, _ = split_part10(data)
    return hashlib.sha256(data[offset:]).hexdigest()


def sent_digests(files: set[Path]) -> dict[str, str]:
    """SOP Instance UID (the file name) -> sha256 of the data set sent."""
    return {p.stem: dataset_digest(p.read_bytes()) for p in files}


def wait_processed(home: Path, env: dict[str, str], timeout: float) -> float:
    """Polls the index until no job is queued or running; returns the seconds waited.
    Raises TimeoutError."""
    started = time.monotonic()
    with Node.from_settings(settings_for(home, env)) as node:
        queue = JobQueue(node.core.catalog)
        while queue.counts().queue_depth:
            if time.monotonic() - started > timeout:
                raise TimeoutError(f"jobs still queued after {timeout:.0f} s")
            time.sleep(0.5)
    return time.monotonic() - started


def check(home: Path, env: dict[str, str], acknowledged: set[Path]) -> Findings:
    """Holds the store and index of ``home`` against the acknowledged files."""
    want = sent_digests(acknowledged)
    found = Findings(acknowledged=len(want))
    with Node.from_settings(settings_for(home, env)) as node:
        objects = node.objects()
        folders = Counter(key.rsplit("/", 2)[-2] for key in objects
                          if key.endswith("/original.dcm") and "/conflicts/" not in key
                          and not key.startswith("_"))
        outputs = {key.rsplit("/", 2)[-2] for key in objects if key.endswith("/output.npy")}
        jobs = _job_targets(node)
        conflicts = Counter(c.sop_uid for c in node.conflicts())
        for uid, digest in want.items():
            record = node.core.catalog.get_instance(uid)
            if record is None:
                found.notes.append(f"missing {uid}")
                continue
            data = node.read_original(record)
            if (dataset_digest(data) == digest
                    and hashlib.sha256(data).hexdigest() == record.sha256):
                found.present += 1
            else:
                found.notes.append(f"damaged {uid}")
            found.duplicates += max(0, folders[uid] - 1) + conflicts[uid]
            if record.state in DONE and uid not in jobs and (
                    record.state == State.NOT_IMAGE or uid in outputs):
                found.processed += 1
            else:
                found.notes.append(f"not processed {uid} ({record.state})")
    found.verify_problems, text = verify(home, env)
    if found.verify_problems:
        found.notes.append("verify: " + text.strip().splitlines()[-1][:200])
    return found


def _job_targets(node: Node) -> set[str]:
    from sqlalchemy import select

    from node.index import schema as s

    return node.core.catalog.reading(
        "listing jobs", lambda conn: set(conn.scalars(select(s.jobs.c.target))))


_VERIFIED = re.compile(r"verified (\d+) objects: (\d+) ok, (\d+) failed")
_INDEX = re.compile(r"index: (\d+) folders without an index row, (\d+) rows without their "
                    r"objects, (\d+) stale temporary files")


def verify(home: Path, env: dict[str, str]) -> tuple[int, str]:
    """``support-node verify``: (problems it reports, its output). Folders it leaves alone
    as received in the last minutes count too: nothing should be left half-written."""
    result = subprocess.run([str(SUPPORT_NODE), "verify", "--home", str(home)],
                            capture_output=True, text=True, env=clean_env(env), timeout=900,
                            check=False)
    text = result.stdout + result.stderr
    verified, index = _VERIFIED.search(text), _INDEX.search(text)
    if verified is None or index is None:
        return 1, text
    problems = int(verified.group(3)) + sum(int(g) for g in index.groups())
    problems += text.count("not indexed yet")
    if result.returncode != 0 and problems == 0:
        problems = 1
    return problems, text
