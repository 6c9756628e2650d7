"""Store and index agree: folders with objects but no index row, index rows without objects,
stale temporary files; and the repair of each (`support-node verify [--repair]`).

How they arise. Ingest writes the objects, then the index row; a process killed in between
leaves objects no listing, query or retrieve ever shows (the instance was never acknowledged,
but its bytes are kept). A row whose objects are gone (deleted by hand, a lost disk, a cleanup
that removed another process's files) lists an instance that cannot be retrieved. A process
killed mid-write leaves a hidden temporary file (node.store.sweep).

Repair:
- a folder without a row is indexed from its own description (instance or kept conflict, and
  queued for processing like any new instance) when the description reads, names this folder,
  and the original's sha256 matches it; otherwise (no description, unreadable, wrong hash, its
  SOP Instance UID already indexed elsewhere) its objects are moved, bytes unchanged, to
  `_quarantine/{the same path}`. Nothing is deleted.
- a folder received in the last `RECENT` (by its description, or its objects' times) may be an
  ingest in progress in a running node: reported as recent, left alone.
- a row whose original and description are both gone is removed (its SOP Instance UID is
  printed, so the instance can be asked for again), unless the store holds none of the indexed
  objects at all: that is a wrong store URL or an unmounted disk, not lost objects.
- stale temporary files are removed.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from node import describe
from node.core import Core
from node.errors import NodeError
from node.index.audit import Entry, os_user
from node.index.inventory import Row, indexed_folders, remove_conflict_row
from node.index.spooled import SpooledRows
from node.layout import CONFLICTS, DESCRIPTION, ORIGINAL, QUARANTINE
from node.store.sweep import find_temp_files, sweep_temp_files

__all__ = ["RECENT", "Consistency", "Repair", "check", "repair"]

log = logging.getLogger("support_node")

#: An unindexed folder younger than this may be an ingest in progress.
RECENT = timedelta(minutes=5)


@dataclass
class Consistency:
    """What `check` found: `unindexed` folders (objects, no row; older than RECENT), `recent`
    unindexed folders, `missing` rows (no original in the store), stale `temp_files`."""

    unindexed: list[str] = field(default_factory=list)
    recent: list[str] = field(default_factory=list)
    missing: list[Row] = field(default_factory=list)
    temp_files: list[str] = field(default_factory=list)
    indexed: int = 0

    @property
    def clean(self) -> bool:
        return not (self.unindexed or self.missing or self.temp_files)


@dataclass
class Repair:
    """What `repair` did; `refused` says why rows were left (empty: not refused)."""

    indexed: list[str] = field(default_factory=list)
    quarantined: list[str] = field(default_factory=list)
    rows_removed: list[Row] = field(default_factory=list)
    temp_removed: int = 0
    refused: str = ""


def folders_of(objects: Iterable[str]) -> dict[str, list[str]]:
    """Instance and conflict folder -> the objects directly in it, for every object of the
    hierarchy (not `_state`, `_quarantine` or other `_` prefixes)."""
    out: dict[str, list[str]] = {}
    for key in objects:
        if key.startswith("_") or "/" not in key:
            continue
        folder, _, _name = key.rpartition("/")
        out.setdefault(folder, []).append(key)
    return out


def check(core: Core, objects: list[str], now: datetime | None = None) -> Consistency:
    """Holds the store's `objects` (keys, as `Node.objects()` lists them) against the index.

    Raises CatalogError, StoreError.
    """
    now = now or datetime.now(UTC)
    rows = indexed_folders(core.catalog)
    present = folders_of(objects)
    keys = set(objects)
    found = Consistency(indexed=len(rows), temp_files=find_temp_files(core.fs))
    for folder in sorted(present.keys() - rows.keys()):
        if not _is_instance_folder(present[folder]):
            continue  # a parent whose only objects are below (e.g. conflicts/) is no folder
        if _received_recently(core, folder, present[folder], now):
            found.recent.append(folder)
        else:
            found.unindexed.append(folder)
    spooled = SpooledRows(core.catalog).paths()  # acknowledged, not uploaded yet: present
    found.missing = [row for folder, row in sorted(rows.items())
                     if f"{folder}/{ORIGINAL}" not in keys
                     and f"{folder}/{ORIGINAL}" not in spooled]
    return found


def repair(core: Core, found: Consistency, objects: list[str],
           report: Callable[[str], None] = lambda _line: None) -> Repair:
    """Repairs what `check` found (module docstring). `report` gets one line per change.

    Raises CatalogError, StoreError (what was done before stays done).
    """
    done = Repair()
    present = folders_of(objects)
    for folder in found.unindexed:
        if _index(core, folder):
            done.indexed.append(folder)
            report(f"indexed {folder}")
        else:
            for key in present.get(folder, []):
                core.fs.move_stored(key, f"{QUARANTINE}/{key}")
            done.quarantined.append(folder)
            report(f"quarantined {folder} -> {QUARANTINE}/{folder}")
    if found.missing and found.indexed and len(found.missing) == found.indexed \
            and not any(k for k in objects if not k.startswith("_")):
        done.refused = ("the store holds none of the indexed objects (wrong store URL, or a "
                        "disk not mounted?): no index row removed")
    else:
        for row in found.missing:
            if _remove_row(core, row):
                done.rows_removed.append(row)
                report(f"removed the index row of {row.sop_uid} ({row.folder}): its objects "
                       "are gone")
    done.temp_removed = sweep_temp_files(core.fs).removed if found.temp_files else 0
    return done


def _is_instance_folder(keys: list[str]) -> bool:
    names = {k.rpartition("/")[2] for k in keys}
    return bool(names & {ORIGINAL, DESCRIPTION})


def _received_recently(core: Core, folder: str, keys: list[str], now: datetime) -> bool:
    doc = _description(core, folder)
    if doc is not None:
        try:
            return now - describe.receipt_of(doc).received_at.astimezone(UTC) < RECENT
        except (KeyError, ValueError, TypeError):
            pass
    for key in keys:
        try:
            when = core.fs.modified(key)
        except (NodeError, OSError, NotImplementedError):
            continue
        when = when if when.tzinfo else when.replace(tzinfo=UTC)
        if now - when < RECENT:
            return True
    return False


def _description(core: Core, folder: str) -> dict[str, Any] | None:
    try:
        doc = describe.decode(core.fs.cat_file(f"{folder}/{DESCRIPTION}"))
    except (NodeError, OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def _index(core: Core, folder: str) -> bool:
    """Indexes `folder` from its description; False if it cannot or should not be."""
    doc = _description(core, folder)
    if doc is None:
        return False
    conflict = f"/{CONFLICTS}/" in f"/{folder}/"
    try:
        if not conflict and doc.get("object_key") != folder:
            return False  # a description copied from elsewhere
        digest = hashlib.sha256(core.fs.cat_file(f"{folder}/{ORIGINAL}")).hexdigest()
        if digest != doc["original"]["sha256"]:
            return False
        if conflict:
            return core.catalog.add_conflict(describe.conflict_from(doc, folder))
        return core.catalog.add_instance(describe.record_from(doc))
    except (NodeError, OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("cannot index %s: %s", folder, type(exc).__name__)
        return False


def _remove_row(core: Core, row: Row) -> bool:
    # Listed as missing a moment ago; look again, object by object, before forgetting it.
    if core.fs.exists(f"{row.folder}/{ORIGINAL}") or core.fs.exists(f"{row.folder}/{DESCRIPTION}"):
        return False
    removed = (remove_conflict_row(core.catalog, row.folder) if row.conflict
               else core.catalog.remove_instance(row.sop_uid))
    if removed and core.audit is not None:
        path = [*row.folder.split("/"), None, None, None, None][:5]
        core.audit.record(Entry(
            "delete", "cli", os_user(), "index row of a missing object removed", path[0],
            study_uid=path[2], series_uid=path[3], sop_uid=path[4], count=1,
            detail="verify --repair"))
    return removed
