"""Re-encrypting a whole store under the active key: resumable, and safe beside a running node.

Each object is rewritten on its own (`EncryptedFileSystem.reencrypt`: atomic, and never over an
object someone else replaced meanwhile), so an interrupted run leaves every object whole, under
the old key or the new one; running again (`support-node keys reencrypt`) skips what is done by
reading 32 header bytes per object.

One pass is not enough beside a running node: an instance received while the pass runs, or an
object a worker rewrote meanwhile, may have been written under the old key just before the
node saw the new key file. So passes repeat, over a fresh listing each time, until one finds
nothing left under another key (at most `max_passes`; later passes only read headers).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from node.store.encrypted_fs import EncryptedFileSystem, Reencrypted

__all__ = ["Progress", "ReencryptReport", "reencrypt_store"]

#: Called with (objects done in this pass, objects in this pass) after each object.
Progress = Callable[[int, int], None]


@dataclass
class ReencryptReport:
    """What `reencrypt_store` did: objects listed (first pass), objects rewritten (in any
    pass), passes run, and how many objects the last pass still found under another key or
    replaced meanwhile (0: the store is complete: every object under the active key)."""

    listed: int = 0
    rewritten: int = 0
    passes: int = 0
    unsettled: int = 0
    gone: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return self.unsettled == 0


def reencrypt_store(fs: EncryptedFileSystem, list_objects: Callable[[], list[str]],
                    progress: Progress | None = None, max_passes: int = 5) -> ReencryptReport:
    """Rewrites every object listed by `list_objects` under `fs.keyring`'s active key (read
    afresh for every object: a rotation by another process is followed), pass after pass
    until a pass finds nothing to do, at most `max_passes`.

    Objects deleted meanwhile are skipped (listed in `gone`). Raises IntegrityError for an
    object that fails authentication (nothing after it is touched: verify first), StoreError.
    """
    report = ReencryptReport()
    rewritten: set[str] = set()
    while report.passes < max_passes:
        objects = list_objects()
        report.passes += 1
        report.listed = report.listed or len(objects)
        found = 0  # under another key, or replaced by someone else while we looked
        for n, key in enumerate(objects, 1):
            try:
                outcome = fs.reencrypt(key)
            except FileNotFoundError:
                report.gone.append(key)
                outcome = Reencrypted.CURRENT
            if outcome is Reencrypted.REWRITTEN:
                rewritten.add(key)
            found += outcome is not Reencrypted.CURRENT
            if progress is not None:
                progress(n, len(objects))
        report.unsettled = found
        if not found:
            break
    report.rewritten = len(rewritten)
    return report
