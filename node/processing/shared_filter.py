"""One blank filter shared by every worker, persisted and versioned in the store.

The model lives at ``_state/blank-filter/{version}.npz`` (encrypted like every object);
the index holds which version is current. A worker judges with its copy, remembers the
rows it learnt since its last save, and saves by loading the current version if another
worker moved it, learning its own rows into it, writing the next version and moving the
index to it by compare-and-set (retrying when it lost the race). So no worker's learning
overwrites another's, and a restart reloads the latest model. Rows learnt after the last
save are lost when a worker is killed: the model learns a little less, nothing else.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from node.errors import NodeError, StoreError
from node.index import versions
from node.layout import STATE
from node.settings import ProcessingSettings
from pipelines.blank_filter import BlankFilter, Verdict, judge_frames

log = logging.getLogger("support_node.processing")

NAME = "blank-filter"
_KEEP = 3  # versions kept in the store (older ones are removed after a save)
_RACES = 5


def key(version: int) -> str:
    """The object key of one version of the model."""
    return f"{STATE}/{NAME}/{version:08d}.npz"


class SharedFilter:
    """The blank filter of one worker, kept in step with the stored model."""

    def __init__(self, fs: Any, catalog: Any, settings: ProcessingSettings,
                 save_every: int = 32) -> None:
        self.fs = fs
        self.catalog = catalog
        self.settings = settings
        self.save_every = save_every
        self.version = 0
        self.filter = self._fresh()
        self._unsaved: list[np.ndarray] = []
        self.load()

    def _fresh(self) -> BlankFilter:
        p = self.settings
        return BlankFilter(downsample=p.filter_downsample, variance_threshold=p.filter_variance,
                           min_images=p.filter_min_images)

    def _matches(self, flt: BlankFilter) -> bool:
        p = self.settings
        return (flt.downsample, flt.variance_threshold, flt.min_images) == (
            p.filter_downsample, p.filter_variance, p.filter_min_images)

    def load(self) -> None:
        """Takes the current stored model (if any, and made with these settings).

        Raises CatalogError / StoreError.
        """
        version = versions.current(self.catalog, NAME)
        if version == self.version:
            return
        flt = BlankFilter.from_state(self.fs.cat_file(key(version)))
        if self._matches(flt):
            self.filter = flt
        else:
            log.warning("the stored blank-filter model was made with other settings; "
                        "a new one is learnt from here")
            self.filter = self._fresh()
        self.version = version
        self.filter.learn(self._unsaved)

    def judge(self, frames: np.ndarray) -> tuple[Verdict, np.ndarray | None]:
        """The verdict on grey frames (n, rows, cols), and the row to learn, or None."""
        return judge_frames(self.filter, frames)

    def learnt(self, row: np.ndarray) -> None:
        """Learns ``row`` (once its job's result is recorded); saves every ``save_every``."""
        self.filter.learn([row])
        self._unsaved.append(row)
        if len(self._unsaved) >= self.save_every:
            self.save()

    def save(self) -> bool:
        """Saves the rows learnt since the last save into a new version of the stored model.

        Returns False when there was nothing to save. A store or index failure is logged
        and the rows are kept for the next try.
        """
        if not self._unsaved:
            return False
        try:
            for _ in range(_RACES):
                self.load()
                new = self.version + 1
                self.fs.pipe_file(key(new), self.filter.state_bytes())
                if versions.advance(self.catalog, NAME, self.version, new):
                    self.version = new
                    self._unsaved = []
                    self._prune(new)
                    return True
                self.fs.rm_file(key(new))  # lost the race: merge into the winner's
        except (NodeError, OSError, ValueError) as exc:
            log.warning("could not save the blank-filter model: %s", exc)
            return False
        log.warning("could not save the blank-filter model: lost the race %d times", _RACES)
        return False

    def _prune(self, version: int) -> None:
        old = version - _KEEP
        if old >= 1:
            try:
                self.fs.rm_file(key(old))
            except (FileNotFoundError, StoreError, OSError):
                pass  # already gone, or removed by the next save
