"""Edge refinement (trainer.refine): window means and the guided filter against a by-hand float64
reference, and the behaviour it exists for: an edge drawn blurred and off by pixels comes back on
the photo's edge."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from trainer.model.metrics import dice_numpy
from trainer.model.shape import DEFAULT_REFINEMENT, EdgeRefinement
from trainer.refine import (
    PROBABILITY_FLOOR,
    apply_coefficients,
    box_mean,
    guided_filter_coefficients,
    refine_logits,
)


def guided_filter(guide: tf.Tensor, source: tf.Tensor, radius: int, eps: float) -> tf.Tensor:
    """The guided filter at the guide's own size, from trainer.refine's two halves."""
    guide = tf.cast(guide, tf.float32)
    return apply_coefficients(*guided_filter_coefficients(guide, source, radius, eps), guide)


def window(x: np.ndarray, row: int, col: int, radius: int) -> np.ndarray:
    """The pixels of ``x`` [H, W, ...] within ``radius`` of (row, col), clipped to the image."""
    return x[max(row - radius, 0) : row + radius + 1, max(col - radius, 0) : col + radius + 1]


def reference_guided_filter(guide: np.ndarray, p: np.ndarray, radius: int, eps: float) -> np.ndarray:
    """He et al.'s colour guided filter written out window by window, in float64."""
    height, width = p.shape
    a = np.zeros((height, width, 3))
    b = np.zeros((height, width))
    for row in range(height):
        for col in range(width):
            colours = window(guide, row, col, radius).reshape(-1, 3)
            values = window(p, row, col, radius).reshape(-1)
            centred = colours - colours.mean(0)
            covariance = centred.T @ centred / len(values) + eps * np.eye(3)
            cross = centred.T @ (values - values.mean()) / len(values)
            a[row, col] = np.linalg.solve(covariance, cross)
            b[row, col] = values.mean() - a[row, col] @ colours.mean(0)
    out = np.zeros((height, width))
    for row in range(height):
        for col in range(width):
            mean_a = window(a, row, col, radius).reshape(-1, 3).mean(0)
            out[row, col] = mean_a @ guide[row, col] + window(b, row, col, radius).mean()
    return out


@pytest.mark.parametrize("radius", [1, 2])
def test_box_mean_is_the_mean_of_each_window_inside_the_image(radius):
    x = np.random.default_rng(0).random((7, 9, 2))
    out = box_mean(tf.constant(x[np.newaxis], tf.float32), radius).numpy()[0]
    expected = [[window(x, r, c, radius).reshape(-1, 2).mean(0) for c in range(9)] for r in range(7)]
    np.testing.assert_allclose(out, np.array(expected), rtol=1e-6)
    # A corner's window holds (radius + 1)^2 pixels: the mean of those, not of a padded window.
    np.testing.assert_allclose(out[0, 0], x[: radius + 1, : radius + 1].reshape(-1, 2).mean(0), rtol=1e-6)


def test_guided_filter_matches_the_window_by_window_definition():
    rng = np.random.default_rng(1)
    guide = rng.random((8, 10, 3))
    guide[:, 5:] += 0.5  # an edge
    p = (rng.random((8, 10)) > 0.5).astype(np.float64)
    out = guided_filter(tf.constant(guide[np.newaxis]), tf.constant(p[np.newaxis, ..., np.newaxis]), 2, 1e-3)
    np.testing.assert_allclose(out.numpy()[0, ..., 0], reference_guided_filter(guide, p, 2, 1e-3), atol=1e-5)


def test_a_flat_guide_makes_it_a_double_window_mean():
    """No colour variation: every a is 0, b the window mean, so the output is the mean of means."""
    p = np.random.default_rng(2).random((1, 6, 6, 1))
    guide = np.full((1, 6, 6, 3), 0.4)
    out = guided_filter(tf.constant(guide), tf.constant(p), 1, 1e-4).numpy()
    twice = box_mean(box_mean(tf.constant(p, tf.float32), 1), 1).numpy()
    np.testing.assert_allclose(out, twice, atol=1e-6)


def car_photo(size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """A silver 'car' (an ellipse) on a slightly darker grey backdrop, noisy: (photo, true mask)."""
    height, width = size
    rows, cols = np.mgrid[:height, :width]
    mask = ((rows - height / 2) / (height / 3)) ** 2 + ((cols - width / 2) / (width / 2.5)) ** 2 < 1
    rng = np.random.default_rng(3)
    photo = np.where(mask[..., None], [0.62, 0.64, 0.66], [0.50, 0.50, 0.52]) + rng.normal(
        0, 0.01, (*size, 3)
    )
    return photo.astype(np.float32), mask


def test_refinement_puts_a_blurred_shifted_edge_back_on_the_photos_edge():
    """The network's view: logits at half the guide's size, blurred over two pixels and off by one.
    Thresholded as they are, they miss the outline; refined with the photo, they follow it."""
    size = (96, 144)
    photo, truth = car_photo(size)
    small = tf.image.resize(truth[np.newaxis, ..., np.newaxis].astype(np.float32), (48, 72), antialias=True)
    blurred = box_mean(tf.roll(small, shift=1, axis=2), 1)  # one model pixel to the right, then blurred
    logits = 8.0 * (blurred - 0.5)
    plain = tf.image.resize(logits, size).numpy()[0, ..., 0] > 0
    model_input = tf.image.resize(photo[np.newaxis], (48, 72), antialias=True)
    refined = refine_logits(logits, model_input, tf.constant(photo[np.newaxis]), DEFAULT_REFINEMENT)
    assert refined.shape == (1, *size, 1)
    refined_mask = refined.numpy()[0, ..., 0] > 0
    assert dice_numpy(plain, truth) < 0.98  # a band of wrong pixels down each side
    assert dice_numpy(refined_mask, truth) > 0.998
    assert (refined_mask != truth).sum() < (plain != truth).sum() / 10
    assert np.abs(refined.numpy()).max() <= np.log((1 - PROBABILITY_FLOOR) / PROBABILITY_FLOOR) + 1e-3


def test_the_default_guide_is_twice_the_models_size():
    assert DEFAULT_REFINEMENT.enabled and not EdgeRefinement(radius=0).enabled
    assert DEFAULT_REFINEMENT.guide_size((192, 288)) == (384, 576)
    assert (DEFAULT_REFINEMENT.radius, DEFAULT_REFINEMENT.eps) == (2, 1e-4)
