"""Edge refinement: the network's low-resolution mask, snapped to the photo's own edges.

The U-Net sees the photo at 192x288; a studio judges the mask at 1918x1280, where one model pixel
is 6.7 photo pixels. Bilinear upsampling of the logits places the edge smoothly but blindly, and
that is where the error is: on real validation cars nearly all wrong pixels lie within a few pixels
of the true outline (``bench/refine.py`` measures it). The photo knows where the outline is (the car's
paint against the backdrop), so a **guided filter** (He, Sun and Tang, "Guided Image Filtering",
TPAMI 2013) redraws the upsampled probabilities as a locally linear function of the photo's colours:
within each small window ``q = a . I + b``, fitted by least squares to the probabilities, so where
the colour changes sharply the probability may too, and where the colour is flat it stays smooth.

It runs at twice the model's size (``trainer.model.shape.GUIDE_SCALE``: 384x576 for the default
model) on the photo resized to that size, where it costs a few milliseconds; on real cars a guide at
three times the size or at the photo's half size did no better. ``radius`` and ``eps`` are in that
guide's pixels and in squared [0, 1] colour units: a radius of 4 is two model pixels, about the
width of the network's blurred edge; a small ``eps`` follows faint colour edges (silver on grey).

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


def box_mean(x: tf.Tensor, radius: int) -> tf.Tensor:
    """Mean of ``x`` [B, H, W, C] over each pixel's (2 radius + 1)^2 window, clipped to the image.

    Two 1-D average pools (separable); TensorFlow's SAME average pooling divides by the number of
    pixels inside the image, so the border's windows are means of what they cover.
    """
    size = 2 * radius + 1
    rows = tf.nn.avg_pool2d(x, (1, size), 1, "SAME")
    return tf.nn.avg_pool2d(rows, (size, 1), 1, "SAME")


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


def guided_filter(guide: tf.Tensor, source: tf.Tensor, radius: int, eps: float) -> tf.Tensor:
    """He et al.'s colour guided filter: ``source`` [B, H, W, 1] filtered by ``guide`` [B, H, W, 3].

    In each window, ``a`` (3 colour weights) and ``b`` minimise sum (a . I + b - p)^2 + eps |a|^2;
    every pixel then averages the (a, b) of the windows covering it and outputs ``a . I + b``. The
    3x3 systems are solved in float64: covariances of a nearly flat backdrop are tiny and the
    cofactors subtract products of them.
    """
    guide, source = tf.cast(guide, tf.float64), tf.cast(source, tf.float64)
    channels = tf.unstack(guide, axis=-1)
    products = [channels[i] * channels[j] for i, j in ((0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2))]
    means = box_mean(tf.concat([guide, source, guide * source, tf.stack(products, axis=-1)], axis=-1), radius)
    mean_guide, mean_source = means[..., 0:3], means[..., 3:4]
    mean_products = tf.unstack(means[..., 7:13], axis=-1)
    guide_means = tf.unstack(mean_guide, axis=-1)
    cross = means[..., 4:7] - mean_guide * mean_source  # cov(I_c, p)
    covariance = [
        mean_products[k] - guide_means[i] * guide_means[j] + (eps if i == j else 0.0)
        for k, (i, j) in enumerate(((0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2)))
    ]
    a = tf.stack(_solve_symmetric_3x3(covariance, tf.unstack(cross, axis=-1)), axis=-1)
    b = mean_source - tf.reduce_sum(a * mean_guide, axis=-1, keepdims=True)
    smooth = box_mean(tf.concat([a, b], axis=-1), radius)
    refined = tf.reduce_sum(smooth[..., :3] * guide, axis=-1, keepdims=True) + smooth[..., 3:]
    return tf.cast(refined, tf.float32)


def refine_logits(logits: tf.Tensor, guides: tf.Tensor, refinement: EdgeRefinement) -> tf.Tensor:
    """Model-size logits [B, h, w, 1] -> refined logits at the guides' size [B, H, W, 1].

    The logits are upsampled (bilinear) to the guide, made probabilities, filtered, clipped and
    turned back into logits, so everything after (the resize to the photo, the threshold at logit
    0, TTA's mean of probabilities) works on them exactly as on the network's own.
    """
    size = tf.shape(guides)[1:3]
    probabilities = tf.sigmoid(tf.image.resize(logits, size, method="bilinear"))
    refined = guided_filter(guides, probabilities, refinement.radius, refinement.eps)
    refined = tf.clip_by_value(refined, PROBABILITY_FLOOR, 1.0 - PROBABILITY_FLOOR)
    return tf.math.log(refined / (1.0 - refined))
