"""Fixed-budget training (segment.fit), its augmentation and the experiment's scores."""

import math

import numpy as np
import pytest
import torch

from pipelines.models import build
from pipelines.segment import (
    FitConfig,
    PairDataset,
    fit,
    phantom_pairs,
    random_affine,
    segmentation_scores,
)
from pipelines.segment.fit import lr_factor

SMALL = (4, 8, 16, 32, 64)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def pairs() -> tuple[PairDataset, PairDataset]:
    return phantom_pairs(12, 32, seed=0), phantom_pairs(6, 32, seed=1)


def _encoder(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in net.encoder.state_dict().items()}


def test_fit_takes_exactly_the_steps_and_keeps_the_last_state(pairs) -> None:
    net = build("unet", features=SMALL, seed=0)
    seen: list[dict] = []
    result = fit(net, pairs[0], FitConfig(steps=6, batch_size=4), eval_data=pairs[1],
                 eval_patients=[0, 0, 0, 1, 1, 1], eval_every=4, on_eval=seen.append)
    assert len(result.losses) == 6 and all(np.isfinite(result.losses))
    assert [p["step"] for p in result.curve] == [4.0, 6.0] and seen == result.curve
    assert {"patient_dice", "slice_dice", "lesion_slice_dice", "fp_slice_rate"} <= set(seen[0])
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in result.state.items())


def test_the_same_seed_gives_the_same_run_and_leaves_the_global_rng(pairs) -> None:
    rng = torch.get_rng_state()
    runs = [fit(build("fcn", features=SMALL, seed=0), pairs[0], FitConfig(steps=3, batch_size=4,
                                                                         seed=7))
            for _ in range(2)]
    assert torch.equal(rng, torch.get_rng_state())
    assert runs[0].losses == runs[1].losses
    assert all(torch.equal(runs[0].state[k], runs[1].state[k]) for k in runs[0].state)


def test_a_frozen_warm_up_and_encoder_lr_zero_leave_the_encoder_alone(pairs) -> None:
    for config in (FitConfig(steps=3, batch_size=4, freeze_encoder=3),
                   FitConfig(steps=3, batch_size=4, encoder_lr=0.0)):
        net = build("unet", features=SMALL, seed=0)
        encoder, head = _encoder(net), net.head.weight.clone()
        fit(net, pairs[0], config)
        assert all(torch.equal(v, net.encoder.state_dict()[k]) for k, v in encoder.items())
        assert not torch.equal(head, net.head.weight)
    net = build("unet", features=SMALL, seed=0)
    encoder = _encoder(net)
    fit(net, pairs[0], FitConfig(steps=3, batch_size=4, freeze_encoder=1))
    assert any(not torch.equal(v, net.encoder.state_dict()[k]) for k, v in encoder.items())


def test_the_cosine_schedule_warms_up_then_falls_to_zero() -> None:
    config = FitConfig(steps=100, warmup=10)
    assert lr_factor(0, config) == pytest.approx(0.1) and lr_factor(9, config) == 1.0
    assert lr_factor(10, config) == 1.0 and lr_factor(55, config) == pytest.approx(0.5)
    assert lr_factor(100, config) == pytest.approx(0.0, abs=1e-9)
    assert lr_factor(50, FitConfig(steps=100, schedule="constant")) == 1.0
    for bad in ({"steps": 0}, {"schedule": "step"}, {"autocast": "float16"}, {"lr": 0}):
        with pytest.raises(ValueError):
            FitConfig(**bad)


def test_the_affine_warp_moves_masks_with_their_images() -> None:
    masks = torch.zeros((4, 32, 32), dtype=torch.long)
    masks[:, 8:20, 10:24] = 1
    images = masks[:, None].float()
    warped, labels = random_affine(images, masks, torch.Generator().manual_seed(0))
    assert warped.shape == images.shape and labels.dtype == torch.long
    agree = ((warped[:, 0] > 0.5).long() == labels).float().mean()
    assert agree > 0.98 and not torch.equal(labels, masks)


def test_scores_count_patients_empty_slices_and_false_positives() -> None:
    truth = np.zeros((4, 8, 8), np.uint8)
    truth[0, :2, :2] = 1  # patient A: lesion of 4 px on slice 0, slice 1 empty
    truth[2, :4, :4] = 1  # patient B: lesion of 16 px on slice 2, slice 3 empty
    pred = truth.copy()
    pred[1, 5, 5] = 1  # a false positive on A's empty slice
    pred[2, :2, :4] = 0  # half of B's lesion missed
    s = segmentation_scores(pred, truth, ["A", "A", "B", "B"])
    assert s["patient_dice"] == pytest.approx((8 / 9 + 16 / 24) / 2)
    assert s["slice_dice"] == pytest.approx((1 + 0 + 16 / 24 + 1) / 4)
    assert s["lesion_slice_dice"] == pytest.approx((1 + 16 / 24) / 2)
    assert s["fp_slice_rate"] == 0.5
    empty = segmentation_scores(np.zeros_like(truth), np.zeros_like(truth))
    assert empty["patient_dice"] == 1.0 and math.isnan(empty["lesion_slice_dice"])
    with pytest.raises(ValueError):
        segmentation_scores(pred, truth, ["A"])


def test_fcn_scores_down_to_half_resolution() -> None:
    net = build("fcn", features=SMALL, seed=0)
    assert len(net.score) == len(SMALL) - 1
    assert net(torch.rand(1, 1, 32, 32)).shape == (1, 2, 32, 32)
