"""The model parameter library: weights and a model card per entry, in the store.

    _library/{arch}/{version}/weights.pt    torch state dicts (encrypted like every object)
                             /card.json     what it is and how it was made

An entry id is ``{arch}/{version}`` (``unet/3``); versions count up per architecture, moved
forward by compare-and-set in the index so two runs finishing at once get two versions.
``kind`` is ``pretrain`` (an encoder from DeepCluster) or ``segment`` (a whole network).
"""

from __future__ import annotations

import io
import json
import platform
import re
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from node.ai.cards import CARD, ROOT, Entry, entries, folder, read
from node.errors import LibraryError
from node.index import versions

WEIGHTS = "weights.pt"
KINDS = ("pretrain", "segment")


def code_version() -> str:
    """The installed support-node version."""
    try:
        return metadata.version("support-node")
    except metadata.PackageNotFoundError:
        return "unknown"


class Library:
    """Save, list, read, export and import entries of the model library in ``fs``."""

    def __init__(self, fs: Any, catalog: Any) -> None:
        self.fs = fs
        self.catalog = catalog

    @classmethod
    def of(cls, node: Any) -> Library:
        """The library of a ``node.api.Node``: its encrypted store and its index."""
        return cls(node.core.fs, node.core.catalog)

    def save(self, arch: str, kind: str, weights: dict[str, dict[str, torch.Tensor]],
             card: dict[str, Any], files: dict[str, bytes] | None = None) -> Entry:
        """Stores ``weights`` (``{"encoder": state_dict}`` or ``{"model": state_dict}``)
        and the card as the next version of ``arch`` (``files``: more objects for the entry's
        folder, e.g. ``manifest.json``). Returns the entry.

        The card gains id, arch, kind, created_at, code and torch versions, parameter count.
        Raises ValueError for an unknown kind, StoreError / CatalogError.
        """
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}")
        if not re.fullmatch(r"[a-z0-9_]+", arch):
            raise ValueError(f"not an architecture name: {arch!r}")
        buffer = io.BytesIO()
        torch.save({k: {n: t.detach().cpu() for n, t in v.items()} for k, v in weights.items()},
                   buffer)
        for _ in range(10):
            version = versions.current(self.catalog, f"library/{arch}") + 1
            entry_id = f"{arch}/{version}"
            full = {**card, "id": entry_id, "arch": arch, "kind": kind,
                    "created_at": card.get("created_at") or datetime.now(UTC).isoformat(),
                    "code_version": code_version(), "torch": torch.__version__,
                    "python": platform.python_version(),
                    "parameters": {k: int(sum(t.numel() for t in v.values()))
                                   for k, v in weights.items()}}
            folder = f"{ROOT}/{entry_id}"
            if self.fs.exists(f"{folder}/{CARD}"):  # left by a save that lost its race
                versions.advance(self.catalog, f"library/{arch}", version - 1, version)
                continue
            extra = {f"{folder}/{name}": data for name, data in (files or {}).items()}
            self.fs.pipe_files({**extra, f"{folder}/{WEIGHTS}": buffer.getvalue(),
                                f"{folder}/{CARD}": json.dumps(full, indent=2).encode()})
            if versions.advance(self.catalog, f"library/{arch}", version - 1, version):
                return Entry(entry_id, full)
        raise LibraryError(f"could not save a new version of {arch}: too many at once")

    def entries(self) -> list[Entry]:
        """Every entry, by architecture then version. Raises StoreError."""
        return entries(self.fs)

    def get(self, entry_id: str) -> Entry:
        """The entry ``arch/version``. Raises LibraryError when there is none."""
        return read(self.fs, entry_id)

    def weights(self, entry_id: str) -> dict[str, dict[str, torch.Tensor]]:
        """The state dicts of an entry. Raises LibraryError."""
        folder = self._folder(entry_id)
        try:
            data = self.fs.cat_file(f"{folder}/{WEIGHTS}")
        except FileNotFoundError:
            raise LibraryError(f"no library entry {entry_id!r}") from None
        loaded = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        if not isinstance(loaded, dict):
            raise LibraryError(f"library entry {entry_id!r} holds no state dicts")
        return loaded

    def load_into(self, model: torch.nn.Module, entry_id: str) -> Entry:
        """Loads an entry into ``model``: a pretrain entry into ``model.encoder`` (any of
        the three architectures with the same encoder settings), a segment entry into the
        whole network. Returns the entry. Raises LibraryError when the weights do not fit.
        """
        entry = self.get(entry_id)
        weights = self.weights(entry_id)
        try:
            if entry.kind == "pretrain":
                model.encoder.load_state_dict(weights["encoder"])  # type: ignore[union-attr]
            else:
                model.load_state_dict(weights["model"])
        except (KeyError, RuntimeError, AttributeError) as exc:
            first = " ".join(str(exc).split())[:300]
            raise LibraryError(f"library entry {entry_id} does not fit this network: "
                               f"{first}") from None
        return entry

    def build(self, entry_id: str) -> Any:
        """The network an entry was made for (from its card's ``net`` settings), with the
        entry's weights loaded. Raises LibraryError."""
        from pipelines.models import NetConfig, build_from

        entry = self.get(entry_id)
        try:
            model = build_from(NetConfig.from_dict(entry.card["net"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise LibraryError(f"library entry {entry_id} has no usable network settings: "
                               f"{exc}") from None
        self.load_into(model, entry_id)
        return model

    def export(self, entry_id: str, out_dir: Path) -> Path:
        """Writes the entry's objects, decrypted, to ``out_dir/{arch}-{version}/``:
        ``weights.pt``, ``card.json`` and ``manifest.json`` (the data it was made from) when
        the run wrote one. Returns the folder."""
        self.get(entry_id)
        target = out_dir / entry_id.replace("/", "-")
        target.mkdir(parents=True, exist_ok=True)
        folder = self._folder(entry_id)
        for key in self.fs.find(folder):
            (target / key.rsplit("/", 1)[1]).write_bytes(self.fs.cat_file(key))
        return target

    def import_(self, folder: Path) -> Entry:
        """Stores an exported entry (``card.json`` + ``weights.pt``, and any other file
        beside them, such as ``manifest.json``) as a new version. ``folder`` is the entry's
        own folder, or the ``--out`` folder ``export`` wrote it into when that holds one
        exported entry.

        Raises LibraryError for a folder that does not hold an export, or holds several.
        """
        folder = exported_folder(folder)
        try:
            card = json.loads((folder / CARD).read_text())
            weights = torch.load(folder / WEIGHTS, map_location="cpu", weights_only=True)
            arch, kind = str(card["arch"]), str(card["kind"])
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            raise LibraryError(f"{folder} is not an exported library entry: {exc}") from None
        card = {k: v for k, v in card.items() if k != "id"} | {"imported_from": card.get("id")}
        files = {p.name: p.read_bytes() for p in folder.iterdir()
                 if p.is_file() and p.name not in (CARD, WEIGHTS)}
        return self.save(arch, kind, weights, card, files)

    @staticmethod
    def _folder(entry_id: str) -> str:
        return folder(entry_id)


def exported_folder(folder: Path) -> Path:
    """The exported entry in ``folder``: itself when it holds ``card.json``, else its one
    subfolder that does (``export`` writes ``{out}/{arch}-{version}/``).

    Raises LibraryError naming the entries when there are several, or none.
    """
    if (folder / CARD).is_file() or not folder.is_dir():
        return folder
    found = sorted(p for p in folder.iterdir() if (p / CARD).is_file())
    if len(found) == 1:
        return found[0]
    if found:
        names = ", ".join(p.name for p in found)
        raise LibraryError(f"{folder} holds {len(found)} exported entries ({names}): "
                           "give the folder of one")
    raise LibraryError(f"{folder} is not an exported library entry: no {CARD} in it or in "
                       "a folder below it")
