"""Losses and metrics against values computed by hand (logit +-10 is a confident 1 / 0)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from trainer.model.losses import bce_dice_loss, soft_dice_loss
from trainer.model.metrics import DiceMetric, IoUMetric, dice_numpy, dice_per_image, iou_per_image

HIGH, LOW = 10.0, -10.0


def batch(*masks: list[list[float]]) -> np.ndarray:
    """2-D lists -> float32 (B, H, W, 1)."""
    return np.array(masks, np.float32)[..., np.newaxis]


# truth top row car; prediction left column car: |T|=2, |P|=2, |P&T|=1.
TRUTH = batch([[1, 1], [0, 0]])
HALF_RIGHT = batch([[HIGH, LOW], [HIGH, LOW]])


def test_dice_and_iou_per_image_by_hand():
    assert dice_per_image(TRUTH, HALF_RIGHT).numpy() == pytest.approx([0.5])  # 2*1 / (2+2)
    assert iou_per_image(TRUTH, HALF_RIGHT).numpy() == pytest.approx([1 / 3])  # 1 / (2+2-1)


def test_both_empty_scores_one_and_one_empty_scores_zero():
    empty, full = batch([[0, 0], [0, 0]]), batch([[1, 1], [1, 1]])
    all_low = batch([[LOW, LOW], [LOW, LOW]])
    all_high = batch([[HIGH, HIGH], [HIGH, HIGH]])
    assert dice_per_image(empty, all_low).numpy() == pytest.approx([1.0])
    assert iou_per_image(empty, all_low).numpy() == pytest.approx([1.0])
    assert dice_per_image(empty, all_high).numpy() == pytest.approx([0.0])
    assert dice_per_image(full, all_low).numpy() == pytest.approx([0.0])


def test_threshold_is_probability_one_half():
    # logit 0.01 -> p 0.5025 (car), -0.01 -> 0.4975 (background)
    assert dice_per_image(batch([[1, 0]]), batch([[0.01, -0.01]])).numpy() == pytest.approx([1.0])


def test_metrics_average_per_image_over_all_batches():
    dice, iou = DiceMetric(), IoUMetric()
    # Batch 1: one image with Dice 0.5 (IoU 1/3). Batch 2: three perfect images.
    perfect_truth = np.concatenate([TRUTH] * 3)
    perfect_logits = np.where(perfect_truth > 0, HIGH, LOW).astype(np.float32)
    for metric in (dice, iou):
        metric.update_state(TRUTH, HALF_RIGHT)
        metric.update_state(perfect_truth, perfect_logits)
    # Per image then mean: (0.5 + 1 + 1 + 1) / 4, not the mean of batch means (0.5 + 1) / 2.
    assert float(dice.result()) == pytest.approx(0.875)
    assert float(iou.result()) == pytest.approx((1 / 3 + 3) / 4)
    dice.reset_state()
    assert float(dice.result()) == 0.0
    assert dice.name == "dice" and iou.name == "iou"


def test_sample_weight_weights_images():
    metric = DiceMetric()
    two = np.concatenate([TRUTH, TRUTH])
    logits = np.concatenate([HALF_RIGHT, np.where(TRUTH > 0, HIGH, LOW).astype(np.float32)])
    metric.update_state(two, logits, sample_weight=np.array([1.0, 3.0]))
    assert float(metric.result()) == pytest.approx((0.5 * 1 + 1.0 * 3) / 4)


def test_soft_dice_and_bce_by_hand():
    zeros = batch([[0, 0], [0, 0]])  # logits 0: every p = 0.5
    # soft Dice: (2 * (0.5 + 0.5) + 1) / ((2) + (4 * 0.5) + 1) = 3 / 5 -> loss 0.4
    assert soft_dice_loss(TRUTH, zeros).numpy() == pytest.approx([0.4])
    # BCE at p = 0.5 is ln 2 for every pixel, whatever the label.
    assert bce_dice_loss(TRUTH, zeros).numpy() == pytest.approx([math.log(2) + 0.4], rel=1e-6)


def test_losses_are_per_image_and_near_zero_when_right():
    perfect = np.where(TRUTH > 0, HIGH, LOW).astype(np.float32)
    losses = bce_dice_loss(np.concatenate([TRUTH, TRUTH]), np.concatenate([perfect, HALF_RIGHT])).numpy()
    assert losses.shape == (2,)
    assert losses[0] < 1e-3 < 0.5 < losses[1]
    # Empty truth, confident background: the smoothing keeps soft Dice at ~0 rather than 0/0.
    empty = batch([[0, 0], [0, 0]])
    assert soft_dice_loss(empty, batch([[LOW, LOW], [LOW, LOW]])).numpy()[0] == pytest.approx(0.0, abs=1e-3)


def test_dice_numpy_full_resolution():
    truth = np.zeros((1280, 1918), np.uint8)
    truth[100:600, 200:1200] = 1
    pred = np.zeros_like(truth)
    pred[100:600, 700:1700] = 1
    assert dice_numpy(pred, truth) == pytest.approx(0.5)
    assert dice_numpy(truth, truth) == 1.0
    assert dice_numpy(np.zeros_like(truth), np.zeros_like(truth)) == 1.0
    assert dice_numpy(truth * 255, truth) == 1.0  # any nonzero is car
    with pytest.raises(ValueError, match=r"prediction shape \(2, 2\) != truth shape \(3, 3\)"):
        dice_numpy(np.zeros((2, 2)), np.zeros((3, 3)))
