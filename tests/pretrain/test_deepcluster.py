"""DeepCluster on a tiny encoder written to the model library's contract, on synthetic images."""

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from pipelines.pretrain import (
    DeepClusterConfig,
    StopRequested,
    deepcluster,
    extract_features,
    kmeans,
    l2_normalise,
    nmi,
    pretrain_encoder,
)

SIZE = 32


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    # tensors this small gain nothing from threads, and lose much when the CPU is shared
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class TinyEncoder(nn.Module):
    """Strided conv stages; returns every stage's map, shallow to deep."""

    def __init__(self, channels: tuple[int, ...]) -> None:
        super().__init__()
        ins = (1, *channels[:-1])
        self.stages = nn.ModuleList(
            nn.Sequential(nn.Conv2d(i, o, 3, stride=2, padding=1), nn.BatchNorm2d(o), nn.ReLU())
            for i, o in zip(ins, channels, strict=True)
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        maps = []
        for stage in self.stages:
            x = stage(x)
            maps.append(x)
        return maps


class TinyNet(nn.Module):
    """The contract: ``encoder`` and ``encoder_channels``; a decoder would sit beside."""

    def __init__(self, channels: tuple[int, ...] = (4, 8, 16), seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.encoder_channels = channels
        self.encoder = TinyEncoder(channels)


def families(n_each: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Discs and stripes of random size, place and period, with noise: (N, 1, S, S), truth."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    images = []
    for _ in range(n_each):
        cy, cx = rng.uniform(10, 22, 2)
        images.append(((yy - cy) ** 2 + (xx - cx) ** 2 < rng.uniform(5, 10) ** 2) * 0.8)
    for _ in range(n_each):
        angle, period = rng.uniform(0, np.pi), rng.uniform(4, 8)
        wave = np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period)
        images.append((wave > 0) * 0.8)
    noisy = np.stack(images)[:, None] + rng.normal(0, 0.05, (2 * n_each, 1, SIZE, SIZE))
    truth = np.repeat([0, 1], n_each)
    return np.clip(noisy, 0, 1).astype(np.float32), truth


IMAGES, TRUTH = families(24)
SMALL = DeepClusterConfig(clusters=4, epochs=2, reassign=1, pca_dim=8, batch_size=8, lr=0.02)


def _weights(state: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    # convolution weights: the deepest norm's affine comes after the (pre-norm) features, so
    # clustering them gives it no gradient
    return [v for k, v in state.items() if k.endswith("weight") and v.ndim == 4]


def test_pretraining_changes_the_encoder_weights() -> None:
    net = TinyNet()
    before = {k: v.clone() for k, v in net.encoder.state_dict().items()}
    result = pretrain_encoder(net, IMAGES, SMALL)
    assert not result.stopped and result.epochs_completed == 2
    for old, new in zip(_weights(before), _weights(result.encoder_state), strict=True):
        assert not torch.equal(old, new)
    assert all(torch.equal(result.encoder_state[k], v)
               for k, v in net.encoder.state_dict().items())  # trained in place


def test_pseudo_labels_are_reassigned_every_t_epochs() -> None:
    rounds: list[dict[str, Any]] = []
    epochs: list[dict[str, Any]] = []
    config = DeepClusterConfig(clusters=4, epochs=4, reassign=2, pca_dim=8, batch_size=8)
    result = pretrain_encoder(
        TinyNet(), IMAGES, config, on_round=rounds.append, on_epoch=epochs.append
    )
    assert [r.round for r in result.history] == [1, 2] and config.rounds == 2
    assert [r.epoch for r in result.history] == [0, 2]
    assert [r.epochs for r in result.history] == [2, 2]
    assert [r["round"] for r in rounds] == [1, 2]
    assert [(e["round"], e["epoch"]) for e in epochs] == [(1, 0), (1, 1), (2, 2), (2, 3)]
    first, second = result.history
    assert first.nmi is None and second.nmi is not None and 0.0 <= second.nmi <= 1.0
    assert rounds[1]["nmi"] == second.nmi
    for record in result.history:
        assert record.loss is not None and np.isfinite(record.loss)
        assert record.cluster_sizes.min >= 1 and record.empty_reseeded >= 0
        assert record.seconds >= record.cluster_seconds > 0
    assert result.labels is not None and result.labels.shape == (len(IMAGES),)
    assert set(result.labels.tolist()) == {0, 1, 2, 3}


def test_an_uneven_last_round_is_shorter() -> None:
    config = DeepClusterConfig(clusters=2, epochs=3, reassign=2, pca_dim=4, batch_size=16)
    result = pretrain_encoder(TinyNet(), IMAGES, config)
    assert [(r.epoch, r.epochs) for r in result.history] == [(0, 2), (2, 1)]


def test_should_stop_ends_early_with_a_usable_state() -> None:
    batches: list[dict[str, Any]] = []
    polls = iter(range(10_000))
    # 6 polls for the first features pass (48 images / 8), then 3 training batches
    result = pretrain_encoder(
        TinyNet(), IMAGES, SMALL, on_batch=batches.append, should_stop=lambda: next(polls) >= 9
    )
    assert result.stopped and result.epochs_completed == 0 and len(batches) == 3
    assert len(result.history) == 1 and result.history[0].epochs == 0
    assert result.history[0].loss is not None and result.labels is not None
    fresh = TinyNet(seed=1)
    fresh.encoder.load_state_dict(result.encoder_state)
    assert extract_features(fresh.encoder, IMAGES).shape == (len(IMAGES), 32)  # mean + std
    assert extract_features(fresh.encoder, IMAGES, pool="mean").shape == (len(IMAGES), 16)


def test_stopping_before_the_first_clustering_returns_no_labels() -> None:
    net = TinyNet()
    net.encoder.train()
    result = pretrain_encoder(net, IMAGES, SMALL, should_stop=lambda: True)
    assert result.stopped and result.labels is None and result.history == []
    assert net.encoder.training  # left in the mode it came in
    with pytest.raises(StopRequested):
        extract_features(net.encoder, IMAGES, should_stop=lambda: True)


def test_same_seed_same_weights_and_the_callers_random_state_is_untouched() -> None:
    nets = [TinyNet() for _ in range(3)]  # TinyNet seeds torch itself
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    a = pretrain_encoder(nets[0], IMAGES, SMALL)
    after = torch.rand(3)
    b = pretrain_encoder(nets[1], list(torch.from_numpy(IMAGES)), SMALL)  # any sequence
    c = pretrain_encoder(nets[2], IMAGES, DeepClusterConfig(**{**SMALL.as_dict(), "seed": 1}))
    for k in a.encoder_state:
        assert torch.equal(a.encoder_state[k], b.encoder_state[k]), k
    assert any(not torch.equal(a.encoder_state[k], c.encoder_state[k]) for k in a.encoder_state)
    assert a.labels is not None and b.labels is not None
    assert np.array_equal(a.labels, b.labels)
    assert torch.equal(after, expected)


def test_fewer_images_than_clusters_is_an_error() -> None:
    config = DeepClusterConfig(clusters=64, epochs=1, pca_dim=8)
    with pytest.raises(ValueError, match="48 images cannot make 64 clusters"):
        pretrain_encoder(TinyNet(), IMAGES, config)


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match=r"\(1, H, W\)"):
        pretrain_encoder(TinyNet(), IMAGES[:, 0], SMALL)
    with pytest.raises(ValueError, match="16 channels, not the 32"):
        deepcluster(TinyNet().encoder, 32, IMAGES, SMALL)
    for bad in ({"clusters": 1}, {"reassign": 0}, {"lr": 0.0}, {"optimizer": "lbfgs"}):
        with pytest.raises(ValueError):
            DeepClusterConfig(**bad)  # type: ignore[arg-type]


def test_adam_without_augmentation_runs() -> None:
    config = DeepClusterConfig(
        clusters=3, epochs=1, pca_dim=4, batch_size=16, optimizer="adam", lr=1e-3, augment=False
    )
    result = pretrain_encoder(TinyNet(), IMAGES, config)
    assert result.history[0].loss is not None and result.config.as_dict()["optimizer"] == "adam"


def _separation(net: TinyNet, images: np.ndarray, truth: np.ndarray) -> float:
    features = l2_normalise(extract_features(net.encoder, images))
    return nmi(kmeans(features, 2, seed=0)[0], truth)


def test_pretraining_separates_two_image_families_better() -> None:
    # k-means (K=2) on the pooled features, before and after pretraining, over four data and
    # network seeds: single seeds vary (one of these stays near 0.6), the mean does not
    before, after = [], []
    for seed in range(4):
        images, truth = families(24, seed=seed)
        net = TinyNet(seed=seed)
        before.append(_separation(net, images, truth))
        config = DeepClusterConfig(
            clusters=8, epochs=6, pca_dim=8, batch_size=8, optimizer="adam", lr=1e-3, seed=seed
        )
        pretrain_encoder(net, images, config)
        after.append(_separation(net, images, truth))
    assert np.mean(after) > 0.8 and np.mean(after) > np.mean(before) + 0.3, (before, after)
