"""Edge refinement: the network's low-resolution mask, snapped to the photo's own edges.

The U-Net sees the photo at 192x288; a studio judges the mask at 1918x1280, where one model pixel
is 6.7 photo pixels. Bilinear upsampling of the logits places the edge smoothly but blindly, and
that is where most errors are: seams a few pixels wide along the outline (``carvana evaluate``'s
worst cases, ``docs/edge_refinement.png``). The photo knows where the outline is (the car's paint
against the backdrop), so a **guided filter** (He, Sun and Tang, "Guided Image Filtering", TPAMI
2013) redraws the probabilities as a locally linear function of the photo's colours: within each
small window ``q = a . I + b``, fitted by least squares to the probabilities, so where the colour
changes sharply the probability may too, and where the colour is flat it stays smooth.

The coefficients are fitted at the model's size, on its input and its probabilities, and applied
at twice that size (``trainer.model.shape.GUIDE_SCALE``: 384x576 for the default model) to the
photo resized there: He and Sun's fast guided filter. On real cars, fitting them at twice the size
instead scored 0.00005 more Dice for five times the added time (README, Results: edge refinement).
``radius`` is in model pixels (2: the 5x5 windows span about the network's blurred edge) and
``eps`` in squared [0, 1] colour units (small: faint colour edges, silver on grey, count too).

Pure TensorFlow functions (the settings, ``EdgeRefinement``, are plain Python in
``trainer.model.shape`` for the configuration); :class:`trainer.export.UNetServing` puts them inside
the SavedModel, so the endpoint, ``carvana evaluate`` and the Lambda all get the refined mask.
"""

from __future__ import annotations

import tensorflow as tf

from trainer.model.shape import EdgeRefinement

# The refined probabilities are clipped into [PROBABILITY_FLOOR, 1 - PROBABILITY_FLOOR] before they
# become logits again (a locally linear fit can overshoot [0, 1] at an edge).
PROBABILITY_FLOOR = 1e-4


def _window_counts(length: tf.Tensor, radius: int) -> tf.Tensor:
    """How many of ``length`` positions each position's window of ``radius`` covers (float32)."""
    index = tf.range(length)
    return tf.cast(tf.minimum(index + radius, length - 1) - tf.maximum(index - radius, 0) + 1, tf.float32)


def box_mean(x: tf.Tensor, radius: int) -> tf.Tensor:
    """Mean of ``x`` [B, H, W, C] (float32) over each pixel's (2 radius + 1)^2 window, clipped to
    the image: the border's windows are means of the pixels they cover.

    Window sums as two 1-D depthwise convolutions with ones (zero padding adds nothing), divided by
    the count of pixels inside the image: on CPU far faster than average pooling with the same
    windows, and exact to float32 rounding.
    """
    channels = x.shape[-1]
    size = 2 * radius + 1
    along_rows = tf.ones([1, size, channels, 1], x.dtype)
    along_cols = tf.ones([size, 1, channels, 1], x.dtype)
    sums = tf.nn.depthwise_conv2d(x, along_rows, [1, 1, 1, 1], "SAME")
    sums = tf.nn.depthwise_conv2d(sums, along_cols, [1, 1, 1, 1], "SAME")
    shape = tf.shape(x)
    counts = _window_counts(shape[1], radius)[:, tf.newaxis] * _window_counts(shape[2], radius)[tf.newaxis, :]
    return sums / counts[tf.newaxis, :, :, tf.newaxis]


def _solve_symmetric_3x3(s: list[tf.Tensor], v: list[tf.Tensor]) -> list[tf.Tensor]:
    """x with S x = v for per-pixel symmetric 3x3 S (``s`` = [s00, s01, s02, s11, s12, s22]) by
    cofactors: S is a covariance plus eps I, so it is positive definite and never singular."""
    s00, s01, s02, s11, s12, s22 = s
    c00 = s11 * s22 - s12 * s12
    c01 = s02 * s12 - s01 * s22
    c02 = s01 * s12 - s02 * s11
    c11 = s00 * s22 - s02 * s02
    c12 = s01 * s02 - s00 * s12
    c22 = s00 * s11 - s01 * s01
    det = s00 * c00 + s01 * c01 + s02 * c02
    return [
        (c00 * v[0] + c01 * v[1] + c02 * v[2]) / det,
        (c01 * v[0] + c11 * v[1] + c12 * v[2]) / det,
        (c02 * v[0] + c12 * v[1] + c22 * v[2]) / det,
    ]


def guided_filter_coefficients(
    guide: tf.Tensor, source: tf.Tensor, radius: int, eps: float
) -> tuple[tf.Tensor, tf.Tensor]:
    """He et al.'s colour guided filter's smoothed coefficients for ``source`` [B, H, W, 1] and
    ``guide`` [B, H, W, 3]: (a [B, H, W, 3], b [B, H, W, 1]), the filtered source being ``a . I + b``.

    In each window, ``a`` (3 colour weights) and ``b`` minimise sum (a . I + b - p)^2 + eps |a|^2;
    every pixel then averages the (a, b) of the windows covering it. The window means are float32;
    the 3x3 systems are solved in float64, because the covariances of a nearly flat backdrop are
    tiny and the cofactors subtract products of them.
    """
    guide, source = tf.cast(guide, tf.float32), tf.cast(source, tf.float32)
    channels = tf.unstack(guide, axis=-1)
    pairs = ((0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2))
    products = [channels[i] * channels[j] for i, j in pairs]
    means = box_mean(tf.concat([guide, source, guide * source, tf.stack(products, axis=-1)], axis=-1), radius)
    mean_guide, mean_source = means[..., 0:3], means[..., 3:4]
    guide_means = tf.unstack(mean_guide, axis=-1)
    mean_products = tf.unstack(means[..., 7:13], axis=-1)
    cross = tf.unstack(tf.cast(means[..., 4:7] - mean_guide * mean_source, tf.float64), axis=-1)
    covariance = [
        tf.cast(mean_products[k] - guide_means[i] * guide_means[j], tf.float64) + (eps if i == j else 0.0)
        for k, (i, j) in enumerate(pairs)
    ]
    a = tf.cast(tf.stack(_solve_symmetric_3x3(covariance, cross), axis=-1), tf.float32)
    b = mean_source - tf.reduce_sum(a * mean_guide, axis=-1, keepdims=True)
    smooth = box_mean(tf.concat([a, b], axis=-1), radius)
    return smooth[..., :3], smooth[..., 3:]


def apply_coefficients(a: tf.Tensor, b: tf.Tensor, guide: tf.Tensor) -> tf.Tensor:
    """``a . I + b`` [B, H, W, 1] at the guide's size, ``a`` and ``b`` resized to it (bilinear).

    ``apply_coefficients(*guided_filter_coefficients(I, p, r, eps), I)`` is the guided filter itself.
    """
    resized = tf.image.resize(tf.concat([a, b], axis=-1), tf.shape(guide)[1:3], method="bilinear")
    return tf.reduce_sum(resized[..., :3] * guide, axis=-1, keepdims=True) + resized[..., 3:]


def refine_logits(
    logits: tf.Tensor, model_input: tf.Tensor, guides: tf.Tensor, refinement: EdgeRefinement
) -> tf.Tensor:
    """Model-size logits [B, h, w, 1] -> refined logits at the guides' size [B, H, W, 1].

    He and Sun's *fast* guided filter (arXiv:1505.00996): the coefficients are fitted at the model's
    size, with the network's own input as the guide and its probabilities as the source (a quarter
    of the pixels of the guide's size: the window means are the filter's cost), then resized to the
    guide's size and applied to the photo there, which draws the edge at that resolution. Clipped
    and turned back into logits, so everything after (the resize to the photo, the threshold at
    logit 0, TTA's mean of probabilities) works on them exactly as on the network's own.
    """
    coefficients = guided_filter_coefficients(
        model_input, tf.sigmoid(logits), refinement.radius, refinement.eps
    )
    refined = apply_coefficients(*coefficients, guides)
    refined = tf.clip_by_value(refined, PROBABILITY_FLOOR, 1.0 - PROBABILITY_FLOOR)
    return tf.math.log(refined / (1.0 - refined))
