"""The pretraining fixes: features that vary, augmentation, the dense mode, the centroid head,
nuisance probes."""

from collections.abc import Iterator

import numpy as np
import pytest
import torch

from pipelines.models import build
from pipelines.phantoms import phantoms, to_unit
from pipelines.pretrain import DeepClusterConfig, extract_features, pretrain_encoder
from pipelines.pretrain.augment import equivariant, intensity_jitter, random_resized_crops
from pipelines.pretrain.clustering import cluster_places
from pipelines.pretrain.probes import adjusted_r2, image_nuisances, probe

SMALL = (4, 8, 16, 32)


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def pool() -> tuple[np.ndarray, np.ndarray]:
    ph = phantoms(24, 32, seed=0)
    return to_unit(ph.hu)[:, None], ph.lesion


def _cv(features: np.ndarray) -> float:
    return float(np.median(features.std(0) / (np.abs(features.mean(0)) + 1e-6)))


def test_pre_norm_features_vary_across_images_where_post_norm_ones_do_not(pool) -> None:
    encoder = build("unet", features=SMALL, seed=0).encoder
    after = extract_features(encoder, pool[0], prenorm=False, pool="mean")
    before = extract_features(encoder, pool[0], prenorm=True, pool="meanstd")
    assert before.shape == (len(pool[0]), 2 * SMALL[-1])
    assert _cv(before) > 2 * _cv(after), (_cv(before), _cv(after))  # 0.14 against 0.056


@pytest.mark.parametrize("head", ["linear", "centroid"])
def test_the_dense_mode_gives_place_labels_and_probes(pool, head: str) -> None:
    images, lesion = pool
    config = DeepClusterConfig(mode="dense", clusters=5, epochs=2, pca_dim=8, batch_size=8,
                               lr=0.01, head=head, dense_level=2, dense_sample=2000)
    net = build("unet", features=SMALL, seed=0)
    before = {k: v.clone() for k, v in net.encoder.state_dict().items()}
    result = pretrain_encoder(net, images, config, probe_factors={
        "lesion": lesion.reshape(len(lesion), -1).max(1).astype(np.int64),
        "lesion_map": lesion})
    assert result.labels is not None and result.labels.shape == (len(images), 8, 8)
    assert len(result.history) == 2 and all(np.isfinite(r.loss) for r in result.history)
    assert {"r2_noise", "r2_body", "nmi_lesion", "nmi_lesion_map_places",
            "enrichment_lesion_map"} <= set(result.probes)
    assert result.history[-1].as_dict()["probes"] == result.probes  # into the card's history
    assert any(not torch.equal(v, result.encoder_state[k]) for k, v in before.items())


def test_the_image_mode_with_crops_and_jitter_is_repeatable(pool) -> None:
    config = DeepClusterConfig(clusters=4, epochs=1, pca_dim=8, batch_size=8, lr=0.01)
    a, b = (pretrain_encoder(build("unet", features=SMALL, seed=0), pool[0], config)
            for _ in range(2))
    assert all(torch.equal(a.encoder_state[k], b.encoder_state[k]) for k in a.encoder_state)
    assert {"r2_noise", "r2_body"} <= set(a.probes)


def test_equivariant_augmentation_moves_labels_with_the_image() -> None:
    labels = torch.randint(0, 3, (6, 8, 8))
    images = labels[:, None].float().repeat_interleave(4, -1).repeat_interleave(4, -2) / 2
    x, y = equivariant(images, labels, torch.Generator().manual_seed(1), min_share=1.0)
    assert x.shape == images.shape and y.shape == labels.shape and not torch.equal(y, labels)
    assert torch.equal((x[:, 0, 2::4, 2::4] * 2).round().long(), y)  # flips and turns: exact
    x, y = equivariant(images, labels, torch.Generator().manual_seed(1), min_share=0.5)
    # crops resize by a non-integer factor, so with labels that change at every cell (the
    # worst case) a cell's centre pixel sometimes falls on a neighbour's edge
    agree = ((x[:, 0, 2::4, 2::4] * 2).round().long() == y).float().mean()
    assert agree > 0.8, agree


def test_intensity_jitter_and_crops_are_seeded_and_keep_shapes() -> None:
    x = torch.rand(4, 1, 16, 16)
    a = intensity_jitter(x, torch.Generator().manual_seed(0))
    b = intensity_jitter(x, torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and not torch.equal(a, x) and a.shape == x.shape
    c = random_resized_crops(x, torch.Generator().manual_seed(0))
    assert c.shape == x.shape and not torch.equal(c, x)


def test_probes_measure_what_the_clusters_carry() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 400)
    explained = labels * 1.0 + rng.normal(0, 0.01, 400)
    probes = probe(labels, 4, {"explained": explained, "unrelated": rng.normal(size=400),
                               "same": labels, "other": rng.integers(0, 2, 400)})
    assert probes["r2_explained"] > 0.99 and abs(probes["r2_unrelated"]) < 0.03
    assert probes["nmi_same"] == pytest.approx(1.0) and probes["nmi_other"] < 0.02
    assert adjusted_r2(np.zeros((5, 1)), np.ones(5)) == 0.0


def test_image_nuisances_recover_noise_and_body_size() -> None:
    images = np.zeros((3, 32, 32), np.float32)
    images[:, 4:28, 4:28] = 0.5
    images[2, 4:28, 4:12] = 0.0  # a smaller body
    rng = np.random.default_rng(0)
    images += (images > 0) * rng.normal(0, 1, images.shape) * np.array([0.01, 0.04, 0.01])[
        :, None, None]
    found = image_nuisances(images)
    assert found["noise"][1] > 3 * found["noise"][0]
    assert found["noise"][0] == pytest.approx(0.01, rel=0.3)
    assert found["body"][2] < found["body"][0]


def test_place_clustering_labels_every_place() -> None:
    rng = np.random.default_rng(0)
    features = rng.normal(size=(4, 5, 5, 6)).astype(np.float32)
    features[:, :2] += 10.0  # two kinds of place
    a = cluster_places(features, 2, pca_dim=1, sample=60, seed=0)
    assert a.labels.shape == (4, 5, 5)
    top, rest = a.labels[:, :2], a.labels[:, 2:]
    assert len(np.unique(top)) == 1 and len(np.unique(rest)) == 1 and top[0, 0, 0] != rest[
        0, 0, 0]
