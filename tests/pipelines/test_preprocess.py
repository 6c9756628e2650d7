import io

import numpy as np
import pytest
from PIL import Image

from pipelines.decode import Decoded, DecodeFacts
from pipelines.preprocess import minmax, preprocess, preview_png, resize
from pipelines.recipe import Recipe


def _decoded(frames: np.ndarray, window: tuple[float, float] | None = None) -> Decoded:
    frames = np.asarray(frames, dtype=np.float32)
    facts = DecodeFacts("1.2.840.10008.1.2.1", "Explicit VR Little Endian", "MONOCHROME2",
                        frames.shape[1], frames.shape[2], frames.shape[0], 1, 16, 12, None,
                        "CT", False, window)
    return Decoded(frames, facts)


def test_normalised_to_unit_range_per_frame() -> None:
    rng = np.random.default_rng(0)
    frames = np.stack([rng.normal(0, 100, (40, 40)), rng.normal(500, 5, (40, 40))])
    out = preprocess(_decoded(frames), Recipe(size=None)).array
    for f in out:
        assert f.min() == 0.0 and f.max() == 1.0


def test_constant_frame_gives_zeros_not_nan() -> None:
    out = preprocess(_decoded(np.full((2, 16, 16), 7.0)), Recipe(size=32)).array
    assert out.shape == (2, 32, 32) and not np.isnan(out).any() and not out.any()
    assert not minmax(np.zeros((3, 3))).any()


def test_stats_are_of_the_modality_values() -> None:
    frames = np.array([[[-1000.0, 0.0], [40.0, 960.0]]])
    prepared = preprocess(_decoded(frames), Recipe(size=8))
    assert (prepared.stats.min, prepared.stats.max, prepared.stats.mean) == (-1000, 960, 0)
    assert prepared.stats.std == pytest.approx(frames.std())
    assert prepared.recipe_id == Recipe(size=8).recipe_id


def test_recipe_window_clips_and_maps() -> None:
    frames = np.array([[[-1000.0, -160.0], [40.0, 1000.0]]])
    prepared = preprocess(_decoded(frames), Recipe(size=None, window=(40, 400), dtype="float32"))
    np.testing.assert_allclose(prepared.array[0], [[0, 0], [0.5, 1]])
    assert prepared.window == (40, 400)


def test_header_window_and_its_absence() -> None:
    frames = np.array([[[0.0, 100.0], [200.0, 300.0]]])
    windowed = preprocess(_decoded(frames, (100, 200)), Recipe(size=None, window="header"))
    np.testing.assert_allclose(windowed.array[0].astype(np.float32), [[0, 0.5], [1, 1]])
    plain = preprocess(_decoded(frames), Recipe(size=None, window="header"))
    assert plain.window is None and plain.array.max() == 1.0


def test_keep_aspect_centres_with_zero_padding() -> None:
    out = resize(np.ones((100, 50), np.float32), 64)
    assert out.shape == (64, 64)
    assert not out[:, :16].any() and not out[:, 48:].any()
    np.testing.assert_allclose(out[:, 16:48], 1.0)
    wide = resize(np.ones((30, 90), np.float32), 60)
    assert not wide[:20].any() and not wide[40:].any() and wide[20:40].min() == 1.0


def test_stretch_fills_the_square() -> None:
    out = resize(np.ones((100, 50), np.float32), 64, keep_aspect=False)
    np.testing.assert_allclose(out, 1.0)


def test_same_size_is_a_no_op() -> None:
    frame = np.random.default_rng(1).random((64, 64), dtype=np.float32)
    assert resize(frame, 64) is frame


def test_output_dtype_and_shape() -> None:
    prepared = preprocess(_decoded(np.random.default_rng(2).normal(size=(3, 100, 80))),
                          Recipe(size=128))
    assert prepared.array.dtype == np.float16 and prepared.array.shape == (3, 128, 128)
    assert 0.0 <= prepared.array.min() and prepared.array.max() <= 1.0


def test_preview_is_a_small_grey_png() -> None:
    prepared = preprocess(_decoded(np.random.default_rng(3).normal(size=(2, 300, 300))),
                          Recipe(size=512))
    image = Image.open(io.BytesIO(preview_png(prepared, frame=1)))
    assert image.format == "PNG" and image.mode == "L" and image.size == (256, 256)
    with pytest.raises(IndexError):
        preview_png(prepared, frame=2)


def test_labels_are_placed_where_the_image_is_and_come_back() -> None:
    from pipelines.preprocess import resize, resize_labels, restore_labels

    image = np.zeros((100, 200), dtype=np.float32)
    labels = np.zeros((100, 200), dtype=np.uint8)
    image[40:60, 120:160] = 1.0
    labels[40:60, 120:160] = 1
    out_image = resize(image, 64)
    out_labels = resize_labels(labels, 64)
    assert out_labels.shape == (64, 64) and out_labels.dtype == np.uint8
    # the mask covers what the image shows (up to the edge pixels bilinear blurs)
    assert np.array_equal(out_labels == 1, out_image > 0.5)
    back = restore_labels(out_labels, 100, 200)
    assert back.shape == (100, 200)
    assert (back == labels).mean() > 0.98
    assert np.array_equal(restore_labels(labels, 100, 200), labels)
