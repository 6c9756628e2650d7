import numpy as np
import pytest

from pipelines.phantoms import CT_WINDOW, ORGANS, phantom, phantoms, to_unit


@pytest.fixture(scope="module")
def batch():
    return phantoms(40, 64, seed=7)


def test_same_seed_same_images_and_a_prefix_does_not_depend_on_n(batch) -> None:
    again = phantoms(10, 64, seed=7)
    assert np.array_equal(again.hu, batch.hu[:10])
    assert np.array_equal(again.lesion, batch.lesion[:10])
    assert not np.array_equal(phantoms(10, 64, seed=8).hu, again.hu)
    assert np.array_equal(phantom(64, 5).hu, phantom(64, 5).hu)


def test_types_shapes_and_ct_like_values(batch) -> None:
    assert batch.hu.shape == batch.lesion.shape == batch.organs.shape == (40, 64, 64)
    assert batch.hu.dtype == np.float32
    assert batch.lesion.dtype == batch.organs.dtype == np.uint8
    assert set(np.unique(batch.lesion)) == {0, 1}
    air = batch.hu[batch.organs == 0]
    assert abs(np.median(air) + 1000) < 50  # air in the corners, bone in the vertebra
    assert np.median(batch.hu[batch.organs == ORGANS.index("vertebra")]) > 400


def test_lesions_lie_inside_host_organs_and_some_images_have_none(batch) -> None:
    hosts = [ORGANS.index(o) for o in ("liver", "spleen", "kidney")]
    assert np.isin(batch.organs[batch.lesion == 1], hosts).all()
    per_image = batch.lesion.reshape(len(batch), -1).sum(axis=1)
    assert 0 < (per_image == 0).sum() < len(batch) // 2
    assert (per_image[per_image > 0] >= 4).all()


def test_lesions_differ_from_their_organ_in_hu(batch) -> None:
    gaps = []
    for hu, lesion, organs in zip(batch.hu, batch.lesion, batch.organs, strict=True):
        if lesion.sum() > 0:
            host = organs[lesion == 1][0]
            rest = hu[(organs == host) & (lesion == 0)].mean()
            gaps.append(np.abs(hu[(lesion == 1) & (organs == host)] - rest).mean())
    assert np.median(gaps) > 40  # lesions are 50 to 90 HU off, blurred at their edges


def test_lesion_rate_zero_and_organ_labels() -> None:
    assert not phantoms(5, 32, lesion_rate=0.0).lesion.any()
    p = phantom(64, 1, lesion_rate=1.0)
    labels = p.label_map(with_organs=True)
    assert (labels == len(ORGANS)).sum() == p.lesion.sum() > 0
    assert np.array_equal(p.label_map(), p.lesion)
    with pytest.raises(ValueError, match="size"):
        phantom(8)


def test_to_unit_windows_or_min_maxes_into_zero_one(batch) -> None:
    unit = to_unit(batch.hu)
    assert unit.dtype == np.float32 and unit.min() == 0.0 and unit.max() == 1.0
    low = CT_WINDOW[0] - CT_WINDOW[1] / 2
    assert to_unit(np.array([[low, low + CT_WINDOW[1] / 4]]))[0, 1] == pytest.approx(0.25)
    per_image = to_unit(batch.hu[:3], window=None)
    assert per_image.shape == (3, 64, 64)
    assert all(f.min() == 0.0 and f.max() == 1.0 for f in per_image)
