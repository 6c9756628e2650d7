"""The filter's decisions on clear cases, its learning path and its persisted state."""

import numpy as np
import pytest

from pipelines.blank_filter import BlankFilter
from pipelines.evaluate_filter import anatomy_variants, blank_variants, generated

ROUNDS = 3


def _kinds(make, seed: int) -> list[tuple[str, np.ndarray, bool]]:
    rng = np.random.default_rng(seed)
    return [item for _ in range(ROUNDS) for item in make(rng)]


BLANKS = _kinds(blank_variants, 101)
ANATOMY = _kinds(anatomy_variants, 202)


@pytest.fixture(scope="module")
def trained() -> BlankFilter:
    flt = BlankFilter(min_images=32, max_components=16)
    flt.update(image for _, image, _ in generated(seed=303, rounds=8))
    assert flt.trained
    return flt


def _ids(items: list) -> list[str]:
    return [f"{kind}-{i}" for i, (kind, _, _) in enumerate(items)]


@pytest.mark.parametrize(("kind", "image", "label"), BLANKS, ids=_ids(BLANKS))
def test_blank_kinds_flagged_before_and_after_learning(
        trained: BlankFilter, kind: str, image: np.ndarray, label: bool) -> None:
    assert BlankFilter().verdict(image).blank, kind
    verdict = trained.verdict(image)
    assert verdict.blank and verdict.score >= 0.5, (kind, verdict)


@pytest.mark.parametrize(("kind", "image", "label"), ANATOMY, ids=_ids(ANATOMY))
def test_anatomy_not_flagged_before_and_after_learning(
        trained: BlankFilter, kind: str, image: np.ndarray, label: bool) -> None:
    assert not BlankFilter().verdict(image).blank, kind
    verdict = trained.verdict(image)
    assert not verdict.blank and verdict.score < 0.5, (kind, verdict)


def test_statistics_decide_before_min_images() -> None:
    flt = BlankFilter(min_images=64, max_components=16)
    taken = flt.update(image for _, image, _ in ANATOMY + BLANKS)
    assert taken == len(ANATOMY)  # blanks are not learnt as real images
    assert not flt.trained and flt.n_components >= 0
    assert flt.verdict(np.zeros((64, 64))).reason == "constant image"


def test_components_by_explained_variance(trained: BlankFilter) -> None:
    assert 1 <= trained.n_components <= 16


def test_state_round_trip_gives_identical_verdicts(trained: BlankFilter) -> None:
    first = BlankFilter.from_state(trained.state_bytes())
    first.update([ANATOMY[0][1]])  # something pending, too
    again = BlankFilter.from_state(first.state_bytes())
    assert again.n_learnt == first.n_learnt and again.n_components == first.n_components
    for _, image, _ in BLANKS + ANATOMY:
        assert again.verdict(image) == first.verdict(image)
    more = [image for _, image, _ in generated(seed=404, rounds=4)]
    again.update(more)
    first.update(more)  # learning goes on the same from a reloaded state
    assert again.state_bytes() == first.state_bytes()


def test_bad_state_is_refused() -> None:
    with pytest.raises(ValueError):
        BlankFilter.from_state(b"not a state")


def test_only_2d_images() -> None:
    with pytest.raises(ValueError):
        BlankFilter().verdict(np.zeros((2, 8, 8)))
