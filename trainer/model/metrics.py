"""Mean Dice (and IoU) per image: the Carvana competition's metric, in TensorFlow and NumPy.

The competition scores each image's Dice and averages over images; a Dice computed over a whole
batch (as many Keras examples do) weights big cars more and is not the same number. A prediction
and a truth that are both empty agree perfectly, so they score 1 (the 0/0 case). The Keras metrics
keep a running sum of per-image scores and a count, so the result is the mean over every image
seen, however the images were batched (and summed across replicas under a distribution strategy).
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

# Logit 0 is probability 0.5: the one threshold used everywhere (export, evaluate, predict).
LOGIT_THRESHOLD = 0.0


def _binarize(y_true: tf.Tensor, logits: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Truth and prediction as float32 {0, 1}, and the axes to sum per image."""
    truth = tf.cast(tf.cast(y_true, tf.float32) > 0.5, tf.float32)
    pred = tf.cast(tf.cast(logits, tf.float32) > LOGIT_THRESHOLD, tf.float32)
    return truth, pred, tf.range(1, tf.rank(truth))


def dice_per_image(y_true: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
    """Dice of the thresholded prediction per image, shape (B,): 2|P&T| / (|P|+|T|), 1 if both empty."""
    truth, pred, axes = _binarize(y_true, logits)
    intersection = tf.reduce_sum(truth * pred, axis=axes)
    total = tf.reduce_sum(truth, axis=axes) + tf.reduce_sum(pred, axis=axes)
    return tf.where(total > 0, 2.0 * intersection / tf.maximum(total, 1.0), 1.0)


def iou_per_image(y_true: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
    """Intersection over union per image, shape (B,): |P&T| / |P or T|, 1 if both empty."""
    truth, pred, axes = _binarize(y_true, logits)
    intersection = tf.reduce_sum(truth * pred, axis=axes)
    union = tf.reduce_sum(truth, axis=axes) + tf.reduce_sum(pred, axis=axes) - intersection
    return tf.where(union > 0, intersection / tf.maximum(union, 1.0), 1.0)


class _MeanPerImage(keras.metrics.Metric):
    """Sum of a per-image score and the number of images; the result is their ratio.

    Subclasses set ``score_fn``. ``sample_weight``, if given, is one weight per image.
    """

    def __init__(self, name: str, dtype=None) -> None:
        super().__init__(name=name, dtype=dtype)
        self.total = self.add_variable(shape=(), initializer="zeros", dtype="float32", name="total")
        self.count = self.add_variable(shape=(), initializer="zeros", dtype="float32", name="count")

    def update_state(self, y_true, y_pred, sample_weight=None) -> None:
        scores = self.score_fn(y_true, y_pred)
        weights = tf.ones_like(scores)
        if sample_weight is not None:
            weights = weights * tf.reshape(tf.cast(sample_weight, tf.float32), [-1])
        self.total.assign_add(tf.reduce_sum(scores * weights))
        self.count.assign_add(tf.reduce_sum(weights))

    def result(self):
        return tf.math.divide_no_nan(self.total, self.count)

    def reset_state(self) -> None:
        self.total.assign(0.0)
        self.count.assign(0.0)

    def get_config(self) -> dict:
        return {"name": self.name}


@keras.saving.register_keras_serializable(package="carvana")
class DiceMetric(_MeanPerImage):
    """Mean Dice per image over all images seen (from logits, threshold 0.5)."""

    score_fn = staticmethod(dice_per_image)

    def __init__(self, name: str = "dice", dtype=None) -> None:
        super().__init__(name=name, dtype=dtype)


@keras.saving.register_keras_serializable(package="carvana")
class IoUMetric(_MeanPerImage):
    """Mean IoU per image over all images seen (from logits, threshold 0.5)."""

    score_fn = staticmethod(iou_per_image)

    def __init__(self, name: str = "iou", dtype=None) -> None:
        super().__init__(name=name, dtype=dtype)


def dice_numpy(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice of two binary masks of the same shape (any nonzero is car), 1.0 when both are empty.

    For full-resolution evaluation, where a 1918x1280 mask per photo is cheaper in NumPy than
    through a TensorFlow graph.
    """
    if pred.shape != truth.shape:
        raise ValueError(f"dice_numpy: prediction shape {pred.shape} != truth shape {truth.shape}")
    pred_bool, truth_bool = pred.astype(bool), truth.astype(bool)
    total = int(pred_bool.sum()) + int(truth_bool.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(pred_bool, truth_bool).sum()) / total
