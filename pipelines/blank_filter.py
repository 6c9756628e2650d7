"""The blank-image filter (paper §2.1, eqs. 2-6): pixel statistics plus an incremental PCA.

Every image is first described by scale-free statistics on a [0, 1] frame (best fed at its
native size, before the recipe's resize, so that pixel noise is still pixel noise):

* *constant*: no two pixels differ (all-black, all-white, uniform grey).
* *flat*: what survives block-averaging to 16² is no larger than the pixel noise would leave
  (a flat field with a little noise), measured as a signal-to-noise ratio; or what survives
  downsampling to ``downsample``² is tiny whatever the noise (hot pixels).
* *marks only* (a blank image but for burned-in text or a ruler). Thinness is judged on a
  working frame: the image itself up to ``NATIVE_MAX`` a side (resampling a small matrix to
  ``downsample``² would smear its one-pixel strokes into thick ones), the ``downsample``²
  image above that. Flagged when, once thin strokes are eroded away, almost nothing differs
  from the background (anatomy, even a small field, keeps a core); or, without a large
  solid core, when the signal is at a fine scale: either downsampling to ``downsample``²
  loses most of its variance (thin strokes on a large image), or no connected region of the
  core is as large as a small field's (1 % of the frame) *and* halving the working frame
  loses a fifth of the variance or more (text of one- or two-pixel strokes on a small
  matrix, whose overlapping glyphs leave small blobs; bold words of a moderate size). Both
  are needed: annotated small fields lose variance on halving too but keep a large core;
  sparse real images (a 60x80 ultrasound) have small cores but keep their variance.

These give a blankness score (0.5 on the decision boundary). Once ``min_images`` clearly
non-blank images have been learnt, the PCA model (mean, components, the number ``k`` chosen by
cumulative explained variance ≥ ``variance_threshold``, eqs. 5-6) measures how much an image
varies, about its own flat background, along the directions real images vary in (projection
energy on the k components), against the low quantile of real images it had not yet learnt.
It may flag an image that the statistics nearly flagged (the uncertain band below the
boundary) and never clears one they flag: in the evaluation, letting it clear images let text
on flat fields through (thin marks project a little on the components of annotated anatomy).

Known limits (``python -m pipelines.evaluate_filter`` scores a harder set for them): words
in a large bold font (each glyph a solid blob the size of a small field) are not caught by
the statistics, only sometimes by the PCA band; fields of anatomy under about 24 pixels
across (a quarter of a 64² matrix) are as small as a few overlapping glyphs and fall in the
uncertain band, as do many annotated small fields, where the PCA may flag them.
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import ndimage
from sklearn.decomposition import IncrementalPCA

FORMAT_VERSION = 1

SNR_MIN = 2.5  # structure / (noise left after averaging to SNR_SIDE²) below this: a flat field
SNR_SIDE = 16  # the SNR is measured on block means, so that even a 64² image averages its noise
STRUCTURE_MIN = 0.01  # downsampled std below this (on a [0, 1] image): flat whatever the noise
CORE_MIN = 0.004  # fraction of the working frame that survives erosion: 16 of 64² pixels
RETENTION_MIN = 0.55  # signal variance kept by downsampling; thin strokes lose most of theirs
CORE_MARKS = 0.05  # ... but a large solid core is anatomy whatever the retention
FOREGROUND_DELTA = 0.15  # how far from the background a pixel must be to count as foreground
NATIVE_MAX = 128  # up to this side thinness is judged on the image itself, not the downsample
BLOB_MIN = 0.01  # connected core (of the frame) of a small field; overlapping glyphs stay below
LOST_MIN = 0.2  # variance lost by halving the frame: strokes of 1-2 pixels lose more
SMALLEST = 24  # below this side, only constancy can be judged
UNCERTAIN = (0.4, 0.6)  # scores the PCA decides, once trained
ENERGY_QUANTILE = 0.01
ENERGY_HISTORY = 4096
_IPCA_FIELDS = ("components_", "singular_values_", "mean_", "var_", "explained_variance_",
                "explained_variance_ratio_")


@dataclass(frozen=True)
class Verdict:
    """``blank``: flagged; ``score``: blankness in [0, 1] (0.5 at the boundary); ``reason``."""

    blank: bool
    reason: str
    score: float


@dataclass(frozen=True)
class Features:
    """The statistics an image is judged by.

    ``core``: the fraction of the working frame (the image itself up to ``NATIVE_MAX`` a side,
    else the downsample) that differs from the background and survives an erosion;
    ``retention``: the signal variance kept by downsampling; ``largest_core``: the largest
    connected region of the core, as a fraction of the frame; ``halving``: the signal
    variance kept by halving the working frame.
    """

    constant: bool
    snr: float
    structure: float
    core: float
    retention: float
    small: bool
    largest_core: float = 0.0
    halving: float = 1.0


def _box(image: np.ndarray, side: int) -> np.ndarray:
    pil = Image.fromarray(np.ascontiguousarray(image, dtype=np.float32))
    return np.asarray(pil.resize((side, side), Image.Resampling.BOX), dtype=np.float32)


def _scale(image: np.ndarray, side: int) -> np.ndarray:
    pil = Image.fromarray(np.ascontiguousarray(image, dtype=np.float32))
    return np.asarray(pil.resize((side, side), Image.Resampling.BILINEAR), dtype=np.float32)


def _as_unit(image: np.ndarray) -> np.ndarray | None:
    x = np.asarray(image, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"a 2-D image is needed, not shape {x.shape}")
    low, high = float(x.min()), float(x.max())
    if not high - low > 1e-6:
        return None
    return (x - np.float32(low)) * np.float32(1.0 / (high - low))


NOISE_ROWS = 128  # rows the noise is measured on: a median of >= 128 x 127 differences


def _noise_sigma(x: np.ndarray) -> float:
    """Robust pixel noise: MAD of horizontal neighbour differences (flat regions dominate),
    on at most ``NOISE_ROWS`` evenly spread rows: the median of that many differences is as
    good an estimate, at a quarter of the cost on a 512² image (the filter's largest)."""
    step = max(1, x.shape[0] // NOISE_ROWS)
    diff = np.abs(np.diff(x[::step], axis=1))
    return float(1.4826 * np.median(diff) / np.sqrt(2.0))


def _halve(image: np.ndarray) -> np.ndarray:
    h, w = image.shape
    pil = Image.fromarray(np.ascontiguousarray(image, dtype=np.float32))
    return np.asarray(pil.resize((max(1, w // 2), max(1, h // 2)), Image.Resampling.BOX),
                      dtype=np.float32)


def _erode(mask: np.ndarray) -> np.ndarray:
    out = mask.copy()
    out[1:, :] &= mask[:-1, :]
    out[:-1, :] &= mask[1:, :]
    out[:, 1:] &= mask[:, :-1]
    out[:, :-1] &= mask[:, 1:]
    out[0, :] = out[-1, :] = out[:, 0] = out[:, -1] = False
    return out


def features(image: np.ndarray, downsample: int = 64) -> tuple[Features, np.ndarray]:
    """The statistics of a 2-D image and its ``downsample``² [0, 1] version (zeros if constant).

    Raises ``ValueError`` for an array that is not 2-D.
    """
    x = _as_unit(image)
    if x is None:
        zeros = np.zeros((downsample, downsample), dtype=np.float32)
        return Features(True, 0.0, 0.0, 0.0, 0.0, min(np.shape(image)) < SMALLEST), zeros
    small = min(x.shape) < SMALLEST
    d = _scale(x, downsample)
    structure = float(d.std())
    sigma = _noise_sigma(x)
    # white noise averaged over blocks of (h/16)(w/16) pixels keeps 1/sqrt of its std; smooth
    # structure keeps nearly all of it, however low its contrast
    block = max(1.0, float(np.sqrt(x.shape[0] * x.shape[1])) / SNR_SIDE)
    noise_left = max(sigma / block, 1e-4)
    snr = float(_box(x, SNR_SIDE).std()) / noise_left
    # variance of the downsampled image over the variance of the image less its pixel noise
    retention = float(d.var()) / max(float(x.var()) - sigma * sigma, 1e-9)
    frame, frame_sigma = (x, sigma) if max(x.shape) <= NATIVE_MAX else (d, _noise_sigma(d))
    core, largest_core = _core(frame)
    # white noise keeps a quarter of its variance when 2x2 blocks are averaged
    halving = ((float(_halve(frame).var()) - frame_sigma ** 2 / 4)
               / max(float(frame.var()) - frame_sigma ** 2, 1e-9))
    return Features(False, snr, structure, core, retention, small, largest_core, halving), d


def _core(frame: np.ndarray) -> tuple[float, float]:
    """The fraction of ``frame`` that differs from its background and survives an erosion,
    and the fraction in its largest connected (8-neighbour) region."""
    background = float(np.median(frame))
    core = _erode(np.abs(frame - np.float32(background)) > FOREGROUND_DELTA)
    if not core.any():
        return 0.0, 0.0
    labels, _ = ndimage.label(core, structure=np.ones((3, 3), dtype=bool))
    largest = int(np.bincount(labels.ravel())[1:].max())
    return float(core.mean()), largest / core.size


def statistics_verdict(f: Features) -> Verdict:
    """The verdict of the pixel statistics alone."""
    if f.constant:
        return Verdict(True, "constant image", 1.0)
    if f.small:
        return Verdict(False, "too small to judge beyond constancy", 0.0)
    flat = max(SNR_MIN / (f.snr + SNR_MIN), STRUCTURE_MIN / (f.structure + STRUCTURE_MIN))
    marks = CORE_MIN / (f.core + CORE_MIN)
    if f.core < CORE_MARKS:
        lost = min(max(1.0 - f.halving, 0.0), 1.0)
        # both needed: annotated small fields lose variance too, but keep a large core
        overlapping = min(BLOB_MIN / (f.largest_core + BLOB_MIN), lost / (lost + LOST_MIN))
        marks = max(marks, RETENTION_MIN / (f.retention + RETENTION_MIN), overlapping)
    score = max(flat, marks)
    if score >= 0.5:
        reason = ("flat field: no structure above the noise" if flat >= marks
                  else "thin marks only (text, ruler) on a flat background")
        return Verdict(True, reason, score)
    return Verdict(False, "structure found", score)


class BlankFilter:
    """Flags blank images; learns from a stream with ``update``; persists with ``state_bytes``."""

    def __init__(self, downsample: int = 64, variance_threshold: float = 0.95,
                 min_images: int = 64, max_components: int = 32) -> None:
        if not 0.0 < variance_threshold <= 1.0:
            raise ValueError("variance_threshold must be in (0, 1]")
        if downsample < 8 or max_components < 1 or min_images < max_components:
            raise ValueError("need downsample >= 8 and min_images >= max_components >= 1")
        self.downsample = downsample
        self.variance_threshold = variance_threshold
        self.min_images = min_images
        self.max_components = max_components
        self._pca: IncrementalPCA | None = None
        self._pending: list[np.ndarray] = []
        self._energies: list[float] = []
        self.n_learnt = 0

    @property
    def trained(self) -> bool:
        """True once ``min_images`` images have been learnt into the PCA model."""
        return self._pca is not None and self.n_learnt >= self.min_images

    @property
    def n_components(self) -> int:
        """k: the fewest components whose cumulative explained variance reaches the threshold."""
        if self._pca is None:
            return 0
        cumulative = np.cumsum(self._pca.explained_variance_ratio_)
        k = int(np.searchsorted(cumulative, self.variance_threshold) + 1)
        return min(k, len(cumulative))

    def update(self, batch: Iterable[np.ndarray]) -> int:
        """Learns from the images of ``batch`` that the statistics call clearly not blank.

        Returns how many were taken. Raises ``ValueError`` for an image that is not 2-D.
        """
        return self.learn(row for row in (self.learnable(image) for image in batch)
                          if row is not None)

    def learnable(self, image: np.ndarray) -> np.ndarray | None:
        """The down-sampled row ``learn`` would take from ``image``, or None when the
        statistics do not call it clearly not blank (the PCA learns real images only).

        Raises ``ValueError`` for an image that is not 2-D.
        """
        f, d = features(image, self.downsample)
        if f.small or statistics_verdict(f).score >= UNCERTAIN[0]:
            return None
        return d.reshape(-1)

    def learn(self, rows: Iterable[np.ndarray]) -> int:
        """Learns rows made by ``learnable`` (possibly by another filter with the same
        ``downsample``: how workers share one model). Returns how many were taken."""
        taken = 0
        for row in rows:
            if row.shape != (self.downsample ** 2,):
                raise ValueError(f"a row of {self.downsample ** 2} values is needed, "
                                 f"not shape {row.shape}")
            self._pending.append(np.asarray(row, dtype=np.float32))
            taken += 1
            if len(self._pending) >= self.max_components:
                self._learn()
        return taken

    def _learn(self) -> None:
        data = np.stack(self._pending).astype(np.float64)
        self._pending = []
        if self._pca is not None:  # energies of images not yet learnt: an honest scale
            self._energies.extend(self._energy(data).tolist())
            self._energies = self._energies[-ENERGY_HISTORY:]
        if self._pca is None:
            self._pca = IncrementalPCA(n_components=self.max_components)
        self._pca.partial_fit(data)
        self.n_learnt += len(data)

    def _energy(self, rows: np.ndarray) -> np.ndarray:
        """Energy of each row's deviation from its own flat background along the k components.

        A flat image with marks has little of it; real images vary along these directions.
        """
        assert self._pca is not None
        basis = self._pca.components_[: self.n_components]
        background = np.median(rows, axis=1, keepdims=True)
        return np.sum(((rows - background) @ basis.T) ** 2, axis=1) / rows.shape[1]

    def likeness(self, image: np.ndarray) -> float | None:
        """PCA energy of ``image`` over the low quantile of real images' (< 1: blank-like).

        Returns None before the model is trained.
        """
        if not self.trained or not self._energies:
            return None
        _, d = features(image, self.downsample)
        return self._likeness(d)

    def _likeness(self, d: np.ndarray) -> float:
        floor = float(np.quantile(self._energies, ENERGY_QUANTILE))
        energy = float(self._energy(d.reshape(1, -1).astype(np.float64))[0])
        return energy / max(floor, 1e-12)

    def verdict(self, image: np.ndarray) -> Verdict:
        """Blank or not, why, and how blank (score in [0, 1]).

        Raises ``ValueError`` for an image that is not 2-D.
        """
        f, d = features(image, self.downsample)
        stats = statistics_verdict(f)
        if f.constant or f.small or not self.trained or not self._energies:
            return stats
        if stats.blank or not UNCERTAIN[0] <= stats.score <= UNCERTAIN[1]:
            return stats  # the PCA may only flag what the statistics nearly flagged
        likeness = self._likeness(d)
        # uncertain statistics: the PCA decides, moving the score across the boundary
        score = float(np.clip(0.5 - 0.1 * np.tanh(np.log(max(likeness, 1e-6))), 0.0, 1.0))
        if likeness < 1.0:
            return Verdict(True, f"{stats.reason}; little energy along the learnt components "
                                 f"(x{likeness:.2f} of real images' low quantile)", score)
        return Verdict(False, f"varies like real images along the learnt components "
                              f"(x{likeness:.2f})", score)

    def state_bytes(self) -> bytes:
        """The whole state (parameters, model, pending images), as a versioned npz."""
        arrays: dict[str, np.ndarray] = {
            "format_version": np.array(FORMAT_VERSION),
            "params": np.array([self.downsample, self.min_images, self.max_components]),
            "variance_threshold": np.array(self.variance_threshold),
            "n_learnt": np.array(self.n_learnt),
            "pending": (np.stack(self._pending) if self._pending
                        else np.zeros((0, self.downsample ** 2), dtype=np.float32)),
            "energies": np.array(self._energies, dtype=np.float64),
        }
        if self._pca is not None:
            for name in _IPCA_FIELDS:
                arrays[f"pca_{name}"] = np.asarray(getattr(self._pca, name))
            arrays["pca_n_samples_seen_"] = np.array(self._pca.n_samples_seen_)
            arrays["pca_noise_variance_"] = np.array(self._pca.noise_variance_)
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)  # type: ignore[arg-type]  # numpy stubs: kwargs are arrays
        return buffer.getvalue()

    @classmethod
    def from_state(cls, data: bytes) -> BlankFilter:
        """A filter restored from ``state_bytes``; its verdicts are identical.

        Raises ``ValueError`` for data that is not a filter state of a known version.
        """
        try:
            z = np.load(io.BytesIO(data), allow_pickle=False)
            version = int(z["format_version"])
        except Exception as exc:
            raise ValueError(f"not a blank-filter state: {exc}") from exc
        if version != FORMAT_VERSION:
            raise ValueError(f"blank-filter state version {version}, "
                             f"this code reads {FORMAT_VERSION}")
        downsample, min_images, max_components = (int(v) for v in z["params"])
        f = cls(downsample, float(z["variance_threshold"]), min_images, max_components)
        f.n_learnt = int(z["n_learnt"])
        f._pending = list(z["pending"])
        f._energies = z["energies"].tolist()
        if "pca_components_" in z:
            pca = IncrementalPCA(n_components=max_components)
            for name in _IPCA_FIELDS:
                setattr(pca, name, z[f"pca_{name}"])
            pca.n_samples_seen_ = z["pca_n_samples_seen_"][()]
            pca.noise_variance_ = float(z["pca_noise_variance_"])
            pca.n_components_ = int(z["pca_components_"].shape[0])
            pca.n_features_in_ = int(z["pca_components_"].shape[1])
            f._pca = pca
        return f


def judge_frames(flt: BlankFilter, frames: np.ndarray, max_frames: int = 8
                 ) -> tuple[Verdict, np.ndarray | None]:
    """The verdict on an image of one or more grey frames ``(frames, rows, cols)``, and the
    row to learn from (of its middle frame), or None.

    A multi-frame image is blank only when every judged frame is (up to ``max_frames``,
    evenly spread, are judged: a long cine is not read in full). Its verdict is that of
    its least blank judged frame. Raises ``ValueError`` for an array that is not 3-D.
    """
    if frames.ndim != 3 or frames.shape[0] < 1:
        raise ValueError(f"frames of shape (n, rows, cols) are needed, not {frames.shape}")
    n = frames.shape[0]
    picks = sorted({round(i * (n - 1) / max(1, max_frames - 1)) for i in range(min(n, max_frames))})
    verdicts = [flt.verdict(frames[i]) for i in picks]
    least = min(verdicts, key=lambda v: v.score)
    if n > 1 and least.blank:
        least = Verdict(True, f"{least.reason} (all {len(picks)} judged frames)", least.score)
    return least, flt.learnable(frames[n // 2])
