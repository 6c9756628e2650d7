import math

import numpy as np
import pytest
import torch

from pipelines.models import build
from pipelines.segment import PairDataset, evaluate, phantom_pairs, predict
from pipelines.segment.train import train

SMALL = (4, 8, 16, 32, 64)


@pytest.fixture(scope="module")
def pairs() -> tuple[PairDataset, PairDataset]:
    return phantom_pairs(24, 32, seed=0), phantom_pairs(8, 32, seed=1)


def test_training_on_phantoms_beats_the_untrained_network_clearly() -> None:
    train_set, val_set = phantom_pairs(160, 64, seed=0), phantom_pairs(40, 64, seed=1)
    net = build("unet", features=(8, 16, 32, 64, 128), seed=0)
    before = evaluate(net, val_set)
    result = train(net, train_set, val_set, epochs=6, batch_size=4, lr=3e-3, seed=0)
    assert before < 0.15
    assert result.best_val_dice > 0.35 and result.best_val_dice > before + 0.25
    assert evaluate(net, val_set) == pytest.approx(result.best_val_dice)  # the best is kept


def test_history_callback_and_best_state(pairs) -> None:
    seen: list[dict] = []
    net = build("fcn", features=SMALL, seed=0)
    result = train(net, *pairs, epochs=2, batch_size=8, seed=0, on_epoch=seen.append)
    assert [h["epoch"] for h in result.history] == [1, 2] and seen == result.history
    assert set(seen[0]) == {"epoch", "loss", "val_dice", "seconds"}
    assert all(h["loss"] > 0 and h["seconds"] > 0 for h in seen)
    best = result.history[result.best_epoch - 1]
    assert best["val_dice"] == result.best_val_dice or math.isnan(result.best_val_dice)
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in result.best_state.items())


def test_the_same_seed_trains_to_the_same_weights_and_leaves_the_global_rng(pairs) -> None:
    rng = torch.get_rng_state()
    runs = []
    for _ in range(2):
        net = build("unet", features=SMALL, seed=0)
        runs.append(train(net, pairs[0], None, epochs=1, batch_size=8, seed=5))
    assert torch.equal(rng, torch.get_rng_state())
    a, b = (r.best_state for r in runs)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert runs[0].history[0]["loss"] == runs[1].history[0]["loss"]
    assert math.isnan(runs[0].history[0]["val_dice"]) and runs[0].best_epoch == 1


def test_init_encoder_sets_the_starting_encoder(pairs) -> None:
    donor = build("unetpp", features=SMALL, seed=1)
    net = build("unet", features=SMALL, seed=2)
    result = train(net, *pairs, epochs=0, init_encoder=donor.encoder.state_dict())
    assert result.history == [] and result.best_epoch == 0
    for k, v in donor.encoder.state_dict().items():
        assert torch.equal(result.best_state[f"encoder.{k}"], v)
    with pytest.raises(RuntimeError):
        train(net, *pairs, epochs=0, init_encoder=build("unet", features=(8, 16, 32)).encoder
              .state_dict())


def test_predict_gives_uint8_label_maps_and_evaluate_a_dice(pairs) -> None:
    net = build("unet", features=SMALL, seed=0)
    images = pairs[1].images.numpy()
    labels = predict(net, images, batch_size=3)
    assert labels.shape == images.shape and labels.dtype == np.uint8
    assert np.array_equal(labels, predict(net, torch.from_numpy(images)[:, None]))
    assert net.training  # the mode is restored
    assert 0.0 <= evaluate(net, pairs[1]) <= 1.0
    with pytest.raises(ValueError, match="shape"):
        predict(net, images[0, 0])


def test_a_perfect_prediction_has_dice_one_and_empty_truth_is_left_out() -> None:
    class Oracle(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            fg = (x > 0.5).float()
            return torch.cat([1 - fg, fg], dim=1)

    images = np.zeros((3, 16, 16), np.float32)
    images[0, 4:8, 4:8] = images[2, 1:3, 1:3] = 1.0
    masks = (images > 0.5).astype(np.int64)
    assert evaluate(Oracle(), PairDataset(images, masks)) == 1.0
    assert math.isnan(evaluate(Oracle(), PairDataset(images[1:2], masks[1:2])))
    assert evaluate(Oracle(), PairDataset(images[1:2], masks[1:2]), ignore_empty=False) == 1.0
    with pytest.raises(ValueError, match="shape"):
        PairDataset(images, masks[:2])
