"""Export the trained U-Net as a TF Serving SavedModel at ``<model_dir>/unet/1/``.

The endpoint receives photos as they come from a studio camera (1918x1280 JPEG bytes) and must
answer with a mask at that same size, so the resize is part of the graph: decode, resize to the
training size, run the network, snap its edges to the photo's (trainer.refine: a guided filter at
twice the training size, the photo as the guide), resize the *logits* back to each photo's own size
(bilinear, then the sigmoid: sharper edges than resizing probabilities), threshold at 0.5. Nothing outside the
SavedModel (TF Serving, the inference handler, ``carvana evaluate``) needs to know the training
size. The full-resolution work is kept to what the answer needs (:func:`decode_photo`: a large JPEG
is decoded already scaled down in the DCT domain; the full-size mask is thresholded on the resized
logits; :func:`encode_mask_png` writes one bit a pixel), so the endpoint costs little more than the
network.
Its signatures, which serving, evaluation and prediction rely on:

- ``serving_default``: ``image_bytes`` string [B] (JPEG/PNG, one size per batch) ->
  ``probabilities`` float32 [B,H,W], ``mask`` uint8 [B,H,W] in {0, 1}
- ``mask_png``: ``image_bytes`` string [B] (sizes may differ) and ``orientation`` int32 [B] (each
  photo's EXIF orientation, 1..8, read by trainer.wire.photo_header; anything else counts as 1) ->
  ``mask_png_bytes`` string [B] (1-bit grey PNG, 1 = car, each photo's size as a screen shows it),
  ``height``/``width`` int32 [B] (that displayed size), ``car_fraction`` float32 [B]. The decoded
  photo is turned upright *before* the network, which was trained on upright photos: a phone photo
  stored sideways gets the mask of the upright photo, not a squashed sideways guess turned after.
- ``mask_png_tta``: as ``mask_png``, with each photo's probabilities averaged with those of its
  mirror image (flipped back): test-time augmentation inside the graph, so ``carvana evaluate
  --tta`` decodes and resizes the photo exactly as the endpoint does
- ``alpha_png`` / ``alpha_png_tta``: the inputs of ``mask_png`` -> ``alpha_png_bytes`` string [B]
  (the car probability at the photo's displayed size as an 8-bit grey PNG, round(255 p): the soft
  edge of a finished photo), ``mask_png_bytes``/``height``/``width``/``car_fraction`` exactly as
  ``mask_png`` (``mask_png_tta``) answers them, and ``flip_disagreement`` float32 [B]: 1 - Dice
  between the masks of the photo and of its mirror image (flipped back), a confidence signal the
  review flag uses (trainer/studio.py). The mirror pass runs either way; with ``_tta`` the
  probabilities are their mean.
- ``predict_images``: ``images`` float32 [B,h,w,3] in [0, 1] -> ``probabilities``, ``mask`` [B,h,w]
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import keras
import tensorflow as tf

from trainer.model.shape import DEFAULT_REFINEMENT, EdgeRefinement
from trainer.model_metadata import write_metadata
from trainer.refine import refine_logits
from trainer.wire import (
    ALPHA_SIGNATURE,
    ALPHA_TTA_SIGNATURE,
    INPUT_NAME,
    MODEL_NAME,
    ORIENTATION_INPUT,
    ORIENTATIONS,
    SIGNATURE,
    THRESHOLD,
    TTA_SIGNATURE,
)

MODEL_VERSION = 1
BYTES_SPEC = tf.TensorSpec([None], tf.string, name=INPUT_NAME)
ORIENTATION_SPEC = tf.TensorSpec([None], tf.int32, name=ORIENTATION_INPUT)
# trainer.wire.ORIENTATIONS as a lookup table; row 0 (and anything outside 1..8) is "as stored".
_ORIENTATION_TABLE = [ORIENTATIONS.get(index, ORIENTATIONS[1]) for index in range(9)]
# The scales libjpeg can decode to in the DCT domain (decode_jpeg's ratio), and how many times the
# model's size the scaled photo must keep on each side. Measured on 16 real Carvana photos with a
# trained 192x288 U-Net against full-resolution decoding: keeping 2x (ratio 2 for 1918x1280) gives
# masks with Dice >= 0.999 (mean 0.9996) for the same time as keeping 1x (ratio 4: Dice 0.9966).
JPEG_RATIOS = (1, 2, 4, 8)
JPEG_DECODE_MARGIN = 2
# sigmoid(logit) > THRESHOLD exactly when logit > log(THRESHOLD / (1 - THRESHOLD)): the full-size
# mask is thresholded on the resized logits, without a sigmoid over millions of pixels.
LOGIT_THRESHOLD = math.log(THRESHOLD / (1.0 - THRESHOLD))
# zlib level of the mask PNGs (see encode_mask_png).
MASK_PNG_COMPRESSION = 1
# Where a PNG's IHDR chunk ends: 8 bytes of signature, then length, type, 13 bytes of data, CRC.
_IHDR_END = 8 + 4 + 4 + 13 + 4


def _orientation_flags(orientation: tf.Tensor) -> list[tf.Tensor]:
    """``[flip_lr, flip_ud, transpose]`` (scalar bools) for an EXIF ``orientation`` (outside 1..8: 1)."""
    valid = (orientation >= 1) & (orientation <= 8)
    return tf.unstack(tf.gather(tf.constant(_ORIENTATION_TABLE, tf.bool), tf.where(valid, orientation, 1)))


def upright(image: tf.Tensor, orientation: tf.Tensor) -> tf.Tensor:
    """A decoded photo [H, W, C] as stored -> as shown, for its EXIF ``orientation`` (scalar int32).

    trainer.wire.orient applies the same table to NumPy arrays (the cut-out's photo).
    """
    flip_lr, flip_ud, transpose = _orientation_flags(orientation)
    image = tf.cond(flip_lr, lambda: tf.reverse(image, [1]), lambda: image)
    image = tf.cond(flip_ud, lambda: tf.reverse(image, [0]), lambda: image)
    return tf.cond(transpose, lambda: tf.transpose(image, [1, 0, 2]), lambda: image)


def jpeg_scale_index(stored: tf.Tensor, transpose: tf.Tensor, model_size: tuple[int, int]) -> tf.Tensor:
    """Index into JPEG_RATIOS of the largest ratio whose decoded photo still covers ``model_size``
    JPEG_DECODE_MARGIN times over.

    ``stored`` is the JPEG's (height, width) as stored; ``transpose`` says whether the photo is shown
    turned (EXIF 5..8), in which case the model's height is measured along the stored width. libjpeg
    decodes 1/r of each side rounded up, so ratio r fits when ceil(side / r) >= margin x the model's
    side: the antialiased resize after it still averages several decoded pixels into each of the
    model's, as it did from full resolution.
    """
    height, width = (JPEG_DECODE_MARGIN * side for side in model_size)
    needed = tf.where(transpose, tf.constant([width, height]), tf.constant([height, width]))
    fits = [tf.reduce_all((stored + ratio - 1) // ratio >= needed) for ratio in JPEG_RATIOS[1:]]
    # fits is monotone (a ratio that fits means every smaller one fits): count the ratios that fit.
    return tf.add_n([tf.cast(fit, tf.int32) for fit in fits])


def decode_photo(
    data: tf.Tensor, orientation: tf.Tensor, model_size: tuple[int, int]
) -> tuple[tf.Tensor, tf.Tensor]:
    """One photo's bytes -> (uint8 [h, w, 3] upright, no smaller than ``model_size``; its full
    (height, width) as shown).

    A JPEG much larger than the model is decoded already scaled down by 2, 4 or 8 (libjpeg's
    DCT-domain scaling, ``decode_jpeg(ratio=...)``): a 1918x1280 studio photo for a 192x288 model
    decodes at 959x640, a quarter of the pixels, so decoding and the antialiased resize that follows
    cost a fraction of what full resolution did (see JPEG_DECODE_MARGIN for what it does to the
    masks). The size returned is still the photo's own (from the JPEG header), which is where the
    mask goes back to. Other formats (PNG) decode at full size as before, and so does a JPEG under
    four times the model's size (ratio 1: the same pixels ``decode_image`` gives).
    """
    transpose = _orientation_flags(orientation)[2]

    def jpeg() -> tuple[tf.Tensor, tf.Tensor]:
        stored = tf.io.extract_jpeg_shape(data, output_type=tf.int32)[:2]
        branches = [functools.partial(tf.io.decode_jpeg, data, channels=3, ratio=r) for r in JPEG_RATIOS]
        return tf.switch_case(jpeg_scale_index(stored, transpose, model_size), branches), stored

    def other() -> tuple[tf.Tensor, tf.Tensor]:
        image = tf.io.decode_image(data, channels=3, dtype=tf.uint8, expand_animations=False)
        return image, tf.shape(image, out_type=tf.int32)[:2]

    image, stored = tf.cond(tf.io.is_jpeg(data), jpeg, other)
    return upright(image, orientation), tf.where(transpose, stored[::-1], stored)


def _crc32_table() -> list[int]:
    """The table of the CRC-32 that PNG chunks carry (ISO 3309, polynomial 0xEDB88320)."""
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (0xEDB88320 ^ (crc >> 1)) if crc & 1 else crc >> 1
        table.append(crc)
    return table


_CRC32_TABLE = _crc32_table()
# Byte i as a one-byte string: how a graph turns computed byte values into bytes.
_BYTE_STRINGS = [bytes([value]) for value in range(256)]
# Eight {0, 1} bytes read as one little-endian uint64, times this, hold in their top byte the eight
# bits in PNG's order (the first pixel in the most significant bit): byte k lands on bit 7 - k, and
# no two products share a bit, so nothing carries into it.
_PACK_BITS = 0x8040201008040201


def _bytes_of(values: tf.Tensor) -> tf.Tensor:
    """int64 values 0..255 [n] -> the n-byte string they spell."""
    return tf.strings.reduce_join(tf.gather(tf.constant(_BYTE_STRINGS), values))


def _big_endian(value: tf.Tensor) -> list[tf.Tensor]:
    """A 32-bit value as its four bytes (int64 scalars), most significant first."""
    value = tf.cast(value, tf.int64)
    return [tf.bitwise.bitwise_and(tf.bitwise.right_shift(value, shift), 255) for shift in (24, 16, 8, 0)]


def _crc32(values: tf.Tensor) -> tf.Tensor:
    """CRC-32 (int64 scalar) of a short byte sequence (int64 [n], n known when tracing)."""
    table = tf.constant(_CRC32_TABLE, tf.int64)
    crc = tf.constant(0xFFFFFFFF, tf.int64)
    for index in range(values.shape[0]):
        low = tf.bitwise.bitwise_and(tf.bitwise.bitwise_xor(crc, values[index]), 255)
        crc = tf.bitwise.bitwise_xor(tf.gather(table, low), tf.bitwise.right_shift(crc, 8))
    return tf.bitwise.bitwise_xor(crc, 0xFFFFFFFF)


def encode_mask_png(mask: tf.Tensor) -> tf.Tensor:
    """A bool mask [H, W] as the PNG the endpoint answers with: 1-bit greyscale, 0 = background,
    1 = car (255 to any reader that expands it to 8 bits: browsers, libpng, Pillow's ``convert("L")``).

    One bit a pixel is an eighth of the bytes to filter and deflate: a real 1918x1280 car mask
    encodes about 4x faster than as 8-bit grey, in 6.8 KB against 17.5 KB (bench/mask_png.py).
    TensorFlow writes only 8-bit PNGs, so the mask is packed eight pixels to a byte and written as
    an 8-bit image a row's bytes wide, whose rows are then byte for byte a 1-bit image's rows (PNG
    filters work on bytes, one byte a pixel below 8 bits too): only the header (IHDR: the true
    width, bit depth 1) and its CRC are rewritten. zlib level 1: a mask is mostly long runs.
    """
    shape = tf.shape(mask, out_type=tf.int32)
    height, width = shape[0], shape[1]
    row_bytes = (width + 7) // 8
    bits = tf.pad(tf.cast(mask, tf.uint8), [[0, 0], [0, row_bytes * 8 - width]])
    words = tf.bitcast(tf.reshape(bits, [height, row_bytes, 8]), tf.uint64)
    top = tf.bitwise.right_shift(words * tf.constant(_PACK_BITS, tf.uint64), tf.constant(56, tf.uint64))
    png = tf.io.encode_png(tf.cast(top, tf.uint8)[..., tf.newaxis], compression=MASK_PNG_COMPRESSION)
    # IHDR: type, width, height, bit depth 1, colour type 0 (grey), deflate, adaptive filters, no interlace.
    header = tf.stack(
        [tf.constant(c, tf.int64) for c in b"IHDR"]
        + _big_endian(width)
        + _big_endian(height)
        + [tf.constant(c, tf.int64) for c in (1, 0, 0, 0, 0)]
    )
    signature_and_length = tf.constant(b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0d")
    rest = tf.strings.substr(png, _IHDR_END, tf.strings.length(png) - _IHDR_END)  # IDAT..., IEND
    return tf.strings.join(
        [signature_and_length, _bytes_of(header), _bytes_of(tf.stack(_big_endian(_crc32(header)))), rest]
    )


IMAGES_SPEC = tf.TensorSpec([None, None, None, 3], tf.float32, name="images")


def car_fraction(mask: tf.Tensor) -> tf.Tensor:
    """The share of car pixels in a bool mask: an exact integer count over the size, so
    ``mask_png`` and ``alpha_png`` report the same float for the same mask."""
    return tf.cast(tf.reduce_sum(tf.cast(mask, tf.int32)), tf.float32) / tf.cast(tf.size(mask), tf.float32)


class UNetServing(tf.Module):
    """The Keras model wrapped with decoding, resizing and edge refinement, as the SavedModel's
    signatures.

    With ``refinement`` on (trainer.refine), every signature's "logits" are the refined ones at
    twice the model's size: the network's logits, filtered with the photo resized to that size as
    the guide. Each photo is therefore resized twice from the decoded pixels: to the model's size
    (the network's input, as without refinement) and to the guide's.
    """

    def __init__(
        self,
        model: keras.Model,
        image_size: tuple[int, int],
        refinement: EdgeRefinement = DEFAULT_REFINEMENT,
    ) -> None:
        super().__init__(name="unet_serving")
        self.model = model
        self.image_size: tuple[int, int] = (int(image_size[0]), int(image_size[1]))
        self.refinement = refinement
        self.guide_size = refinement.guide_size(self.image_size)

    def _to_model_size(self, images: tf.Tensor) -> tf.Tensor:
        """Resize a float batch to the training size; antialiasing matches a proper downscale."""
        return tf.image.resize(images, self.image_size, method="bilinear", antialias=True)

    def _inputs(self, images: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """A float batch at any size -> (the network's input, the refinement's guide: empty when off)."""
        if not self.refinement.enabled:
            return self._to_model_size(images), tf.zeros([tf.shape(images)[0], 0, 0, 3])
        guides = tf.image.resize(images, self.guide_size, method="bilinear", antialias=True)
        return self._to_model_size(images), guides

    def _logits(self, model_sized: tf.Tensor, guides: tf.Tensor) -> tf.Tensor:
        """The network's logits [B, h, w, 1]; refined at the guide's size when refinement is on."""
        logits = tf.cast(self.model(model_sized, training=False), tf.float32)
        if not self.refinement.enabled:
            return logits
        return refine_logits(logits, model_sized, guides, self.refinement)

    def _outputs(self, logits: tf.Tensor, size: tf.Tensor) -> dict[str, tf.Tensor]:
        """Probabilities and binary mask [B, H, W] at ``size`` from ``_logits``' [B, h, w, 1]."""
        probabilities = tf.sigmoid(tf.image.resize(logits, size, method="bilinear"))[..., 0]
        return {"probabilities": probabilities, "mask": tf.cast(probabilities > THRESHOLD, tf.uint8)}

    def _full_size_mask(self, logits: tf.Tensor, size: tf.Tensor) -> tf.Tensor:
        """bool [H, W] at ``size`` from one photo's ``_logits`` [h, w, 1]: the same pixels as
        thresholding ``_outputs``' probabilities, without computing them (LOGIT_THRESHOLD)."""
        return tf.image.resize(logits[tf.newaxis], size, method="bilinear")[0, ..., 0] > LOGIT_THRESHOLD

    def _decode_resized(
        self, image_bytes: tf.Tensor, orientation: tf.Tensor | None = None
    ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """Each photo decoded, turned upright by its orientation (none: as stored) and resized to the
        training size, its refinement guide (``_inputs``), and its (height, width) as shown."""
        if orientation is None:
            orientation = tf.ones(tf.shape(image_bytes), tf.int32)
        guide_shape = [*self.guide_size, 3] if self.refinement.enabled else [0, 0, 3]

        def decode(args: tuple[tf.Tensor, tf.Tensor]) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
            data, turn = args
            image, size = decode_photo(data, turn, self.image_size)
            model_sized, guide = self._inputs(tf.cast(image, tf.float32)[tf.newaxis] / 255.0)
            return model_sized[0], guide[0], size

        return tf.map_fn(
            decode,
            (image_bytes, orientation),
            fn_output_signature=(
                tf.TensorSpec([*self.image_size, 3], tf.float32),
                tf.TensorSpec(guide_shape, tf.float32),
                tf.TensorSpec([2], tf.int32),
            ),
        )

    @tf.function(input_signature=[BYTES_SPEC])
    def serving_default(self, image_bytes: tf.Tensor) -> dict[str, tf.Tensor]:
        images, guides, sizes = self._decode_resized(image_bytes)
        tf.debugging.assert_equal(
            sizes,
            tf.broadcast_to(sizes[:1], tf.shape(sizes)),
            message="serving_default: all photos of a batch must have the same size "
            "(send one photo per request, or use the mask_png signature)",
        )
        return self._outputs(self._logits(images, guides), sizes[0])

    def _with_mirrors(self, images: tf.Tensor, guides: tf.Tensor) -> tf.Tensor:
        """The logits of the batch with its mirror images appended (one network call for both)."""
        flip = functools.partial(tf.reverse, axis=[2])
        return self._logits(tf.concat([images, flip(images)], 0), tf.concat([guides, flip(guides)], 0))

    def _encoded(
        self, images: tf.Tensor, guides: tf.Tensor, sizes: tf.Tensor, *, tta: bool
    ) -> dict[str, tf.Tensor]:
        """``mask_png``'s outputs for model-size images, their guides and each photo's (height, width).

        With ``tta`` the batch runs once with its mirror images appended, and each photo's
        probabilities are the mean of its own and its mirror's (flipped back), at the photo's size.
        """
        batch = tf.shape(images)[0]
        logits = self._with_mirrors(images, guides) if tta else self._logits(images, guides)
        mirrored = logits[batch:] if tta else logits

        def encode(args: tuple[tf.Tensor, tf.Tensor, tf.Tensor]) -> tuple[tf.Tensor, tf.Tensor]:
            one_logits, one_mirrored, size = args
            if tta:
                probabilities = self._outputs(one_logits[tf.newaxis], size)["probabilities"][0]
                flipped = self._outputs(one_mirrored[tf.newaxis], size)["probabilities"][0]
                mask = (probabilities + flipped[:, ::-1]) / 2.0 > THRESHOLD
            else:
                mask = self._full_size_mask(one_logits, size)
            return encode_mask_png(mask), car_fraction(mask)

        pngs, fractions = tf.map_fn(
            encode,
            (logits[:batch], mirrored, sizes),
            fn_output_signature=(tf.TensorSpec([], tf.string), tf.TensorSpec([], tf.float32)),
        )
        return {
            "mask_png_bytes": pngs,
            "height": sizes[:, 0],
            "width": sizes[:, 1],
            "car_fraction": fractions,
        }

    @tf.function(input_signature=[BYTES_SPEC, ORIENTATION_SPEC])
    def mask_png(self, image_bytes: tf.Tensor, orientation: tf.Tensor) -> dict[str, tf.Tensor]:
        return self._encoded(*self._decode_resized(image_bytes, orientation), tta=False)

    @tf.function(input_signature=[BYTES_SPEC, ORIENTATION_SPEC])
    def mask_png_tta(self, image_bytes: tf.Tensor, orientation: tf.Tensor) -> dict[str, tf.Tensor]:
        return self._encoded(*self._decode_resized(image_bytes, orientation), tta=True)

    def _alpha_encoded(
        self, images: tf.Tensor, guides: tf.Tensor, sizes: tf.Tensor, *, tta: bool
    ) -> dict[str, tf.Tensor]:
        """``alpha_png``'s outputs: the photo and its mirror in one batch, each resized to the photo."""
        # Batched as mask_png (mask_png_tta with ``tta``) batches, so the mask is theirs to the bit.
        if tta:
            batch = tf.shape(images)[0]
            both = self._with_mirrors(images, guides)
            logits, mirrored = both[:batch], both[batch:]
        else:
            logits = self._logits(images, guides)
            mirrored = self._logits(images[:, :, ::-1], guides[:, :, ::-1])

        def encode(args: tuple[tf.Tensor, tf.Tensor, tf.Tensor]) -> tuple[tf.Tensor, ...]:
            one_logits, one_mirrored, size = args
            plain = self._outputs(one_logits[tf.newaxis], size)["probabilities"][0]
            flipped = self._outputs(one_mirrored[tf.newaxis], size)["probabilities"][0][:, ::-1]
            probabilities = (plain + flipped) / 2.0 if tta else plain
            # mask_png's own rule (the logits' threshold without TTA), so the two masks are one
            mask = probabilities > THRESHOLD if tta else self._full_size_mask(one_logits, size)
            plain_mask, flipped_mask = plain > THRESHOLD, flipped > THRESHOLD
            both = tf.reduce_sum(tf.cast(plain_mask, tf.float32)) + tf.reduce_sum(
                tf.cast(flipped_mask, tf.float32)
            )
            differ = tf.reduce_sum(tf.cast(tf.math.logical_xor(plain_mask, flipped_mask), tf.float32))
            alpha = tf.cast(tf.round(probabilities * 255.0), tf.uint8)
            return (
                tf.io.encode_png(alpha[..., tf.newaxis]),
                encode_mask_png(mask),  # the bytes mask_png answers for the same mask
                car_fraction(mask),
                tf.math.divide_no_nan(differ, both),
            )

        alphas, pngs, fractions, disagreement = tf.map_fn(
            encode,
            (logits, mirrored, sizes),
            fn_output_signature=(
                tf.TensorSpec([], tf.string),
                tf.TensorSpec([], tf.string),
                tf.TensorSpec([], tf.float32),
                tf.TensorSpec([], tf.float32),
            ),
        )
        return {
            "alpha_png_bytes": alphas,
            "mask_png_bytes": pngs,
            "height": sizes[:, 0],
            "width": sizes[:, 1],
            "car_fraction": fractions,
            "flip_disagreement": disagreement,
        }

    @tf.function(input_signature=[BYTES_SPEC, ORIENTATION_SPEC])
    def alpha_png(self, image_bytes: tf.Tensor, orientation: tf.Tensor) -> dict[str, tf.Tensor]:
        return self._alpha_encoded(*self._decode_resized(image_bytes, orientation), tta=False)

    @tf.function(input_signature=[BYTES_SPEC, ORIENTATION_SPEC])
    def alpha_png_tta(self, image_bytes: tf.Tensor, orientation: tf.Tensor) -> dict[str, tf.Tensor]:
        return self._alpha_encoded(*self._decode_resized(image_bytes, orientation), tta=True)

    @tf.function(input_signature=[IMAGES_SPEC])
    def predict_images(self, images: tf.Tensor) -> dict[str, tf.Tensor]:
        logits = self._logits(*self._inputs(images))
        return self._outputs(logits, tf.shape(images)[1:3])


def export_saved_model(
    model: keras.Model,
    model_dir: str | Path,
    image_size: tuple[int, int],
    *,
    name: str = MODEL_NAME,
    version: int = MODEL_VERSION,
    metadata: Mapping[str, Any] | None = None,
    refinement: EdgeRefinement = DEFAULT_REFINEMENT,
) -> Path:
    """Write ``<model_dir>/<name>/<version>/`` and return it; an existing export is replaced whole.

    ``refinement`` (trainer.refine) is built into every signature: what the endpoint serves is what
    ``carvana evaluate`` scores.

    The SavedModel is written beside the target and renamed into place, so TF Serving (which polls
    the version folders) never sees a half-written version. ``metadata`` (how training went, see
    ``trainer.model_metadata``) goes inside it, in ``assets.extra/``, before the rename.
    """
    target = Path(model_dir) / name / str(version)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".tmp-{os.getpid()}-{version}")
    old = target.with_name(f".old-{os.getpid()}-{version}")
    shutil.rmtree(tmp, ignore_errors=True)
    module = UNetServing(model, image_size, refinement)
    signatures = {
        "serving_default": module.serving_default,
        SIGNATURE: module.mask_png,
        TTA_SIGNATURE: module.mask_png_tta,
        ALPHA_SIGNATURE: module.alpha_png,
        ALPHA_TTA_SIGNATURE: module.alpha_png_tta,
        "predict_images": module.predict_images,
    }
    try:
        tf.saved_model.save(module, str(tmp), signatures=signatures)
        if metadata is not None:
            write_metadata(tmp, metadata)
        if target.exists():
            os.replace(target, old)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(old)
    return target
