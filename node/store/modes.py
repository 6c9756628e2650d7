"""File modes of the node's home: private to its owner.

The index holds patient names, IDs and birth dates in clear; the key file holds the keys. So the
node creates every file 0600 and every folder 0700: `restrict_umask` (umask 077) is set when a
CLI process starts, and the processes it spawns inherit it. A home made by an older version, or
by hand, may already be readable by others: `exposed` lists what in it is accessible by group or
others, and `warn_exposed` logs that once at start (paths only: the layout names folders by
hospital, patient pseudonym and UIDs, never by patient name).

Only the places that matter are looked at, not every object: the home itself and what lies
directly in it (the index and its WAL files, the key file, the store folder), the index and
key files wherever the configuration puts them, and the first levels of a local store (its
root, hospitals, patients). Objects deeper down are encrypted; their folders' modes follow their
parents' in any home this node created.
"""

from __future__ import annotations

import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from node.settings import Settings

__all__ = ["PRIVATE_UMASK", "Exposed", "exposed", "restrict_umask", "sqlite_file", "warn_exposed"]

log = logging.getLogger("support_node")

PRIVATE_UMASK = 0o077
_STORE_DEPTH = 2  # store root, hospitals, patient pseudonyms
_SHOWN = 8


@dataclass(frozen=True)
class Exposed:
    """A path accessible by group or others, and its mode."""

    path: Path
    mode: int

    def __str__(self) -> str:
        return f"{self.path} ({self.mode:04o})"


def restrict_umask() -> int:
    """Sets the process umask to 077 (files 0600, folders 0700); returns the old one."""
    return os.umask(PRIVATE_UMASK)


def exposed(settings: Settings) -> list[Exposed]:
    """What the node keeps that group or others can access, sorted by path."""
    seen: dict[Path, Exposed] = {}
    for path in _places(settings):
        try:
            mode = stat.S_IMODE(os.lstat(path).st_mode)
        except OSError:
            continue
        if mode & 0o077 and not os.path.islink(path):
            seen[path] = Exposed(path, mode)
    return sorted(seen.values(), key=lambda e: str(e.path))


def warn_exposed(settings: Settings) -> list[Exposed]:
    """Logs one warning naming what `exposed` finds (the first few paths, a count, the fix);
    returns the list."""
    found = exposed(settings)
    if found:
        shown = ", ".join(str(e) for e in found[:_SHOWN])
        more = f" and {len(found) - _SHOWN} more" if len(found) > _SHOWN else ""
        log.warning("%d paths of the node are accessible by group or others (the index holds "
                    "patient data): %s%s; restrict them with: chmod -R go-rwx %s",
                    len(found), shown, more, settings.home)
    return found


def _places(settings: Settings) -> list[Path]:
    home = settings.home
    places = [home, settings.keys.file]
    if home.is_dir():
        places += sorted(home.iterdir())
    index = sqlite_file(settings.index.url)
    if index is not None:
        places += [index, *(index.with_name(index.name + s) for s in ("-wal", "-shm"))]
    store = _local_store(settings.store.url)
    if store is not None:
        places += _tree(store, _STORE_DEPTH)
    return places


def _tree(root: Path, depth: int) -> list[Path]:
    out = [root]
    level = [root]
    for _ in range(depth):
        below = []
        for folder in level:
            try:
                below += [p for p in folder.iterdir() if p.is_dir() and not p.is_symlink()]
            except OSError:
                continue
        out += below
        level = below
    return out


def sqlite_file(url: str) -> Path | None:
    """The database file of a SQLite URL (None for another database, or in memory)."""
    head, sep, rest = url.partition(":///")
    if not sep or not head.startswith("sqlite"):
        return None
    file = rest.partition("?")[0]
    return Path(file) if file and file != ":memory:" else None


def _local_store(url: str) -> Path | None:
    parts = urlsplit(url)
    if parts.scheme == "file":
        return Path(unquote(parts.path))
    if parts.scheme == "" and url:
        return Path(url)
    return None
