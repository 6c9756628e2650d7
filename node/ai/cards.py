"""Model cards of the library, read without torch (the web edge lists them).

    _library/{arch}/{version}/card.json     what the entry is and how it was made
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from node.errors import LibraryError

ROOT = "_library"
CARD = "card.json"
ID = re.compile(r"([a-z0-9_]+)/([0-9]+)")


@dataclass(frozen=True)
class Entry:
    """One library entry: its id and its model card."""

    id: str
    card: dict[str, Any]

    @property
    def arch(self) -> str:
        return str(self.card["arch"])

    @property
    def kind(self) -> str:
        return str(self.card["kind"])


def folder(entry_id: str) -> str:
    """The entry's folder in the store. Raises LibraryError for an id that is not one."""
    if not ID.fullmatch(entry_id):
        raise LibraryError(f"not a library entry id: {entry_id!r} (want arch/version, "
                           "e.g. unet/3)")
    return f"{ROOT}/{entry_id}"


def read(fs: Any, entry_id: str) -> Entry:
    """The entry ``arch/version``. Raises LibraryError when there is none."""
    try:
        card = json.loads(fs.cat_file(f"{folder(entry_id)}/{CARD}"))
    except FileNotFoundError:
        raise LibraryError(f"no library entry {entry_id!r} "
                           "(see `support-node library ls`)") from None
    return Entry(entry_id, card)


def entries(fs: Any) -> list[Entry]:
    """Every entry, by architecture then version. Raises StoreError."""
    try:
        keys = fs.find(ROOT)
    except FileNotFoundError:
        return []
    out = []
    for key in keys:
        parts = key.split("/")
        if len(parts) == 4 and parts[3] == CARD and ID.fullmatch("/".join(parts[1:3])):
            out.append(read(fs, "/".join(parts[1:3])))
    return sorted(out, key=lambda e: (e.arch, int(e.id.split("/")[1])))
