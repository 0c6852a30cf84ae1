"""Kaggle run-length encoding of binary masks (the Carvana submission format).

The rule: flatten the mask row-major (C order), number pixels from 1, and write each run of car
pixels as ``"start length"``; an empty mask is the empty string. This module is pure NumPy on
purpose: the serving container vendors it alone (no TensorFlow, no Pillow there), so the endpoint
and the Kaggle CSV agree byte for byte.
"""

from __future__ import annotations

import numpy as np


def rle_encode(mask: np.ndarray) -> str:
    """Encode a 2-D mask (any dtype; non-zero = car) as Kaggle RLE.

    Vectorised: the run boundaries are the places where the padded flat mask changes value, so one
    ``np.diff`` finds every start and end at once (a 1918x1280 mask takes a few milliseconds).
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"rle_encode expects a 2-D mask (height, width), got shape {mask.shape}")
    flat = np.zeros(mask.size + 2, dtype=np.int8)
    flat[1:-1] = mask.ravel(order="C") != 0
    # Positions where the value changes: starts (0->1) and ends (1->0), alternating, 1-indexed by
    # construction because of the leading pad.
    changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    if changes.size == 0:
        return ""
    runs = changes.reshape(-1, 2)
    runs[:, 1] -= runs[:, 0]
    return " ".join(runs.ravel().astype(str).tolist())


def rle_decode(rle: str, height: int, width: int) -> np.ndarray:
    """Decode Kaggle RLE into a ``(height, width)`` uint8 mask of {0, 1}.

    Raises ValueError for a malformed string (odd number of fields, non-integers, runs outside the
    image) rather than returning a silently wrong mask.
    """
    size = height * width
    fields = (rle or "").split()
    if len(fields) % 2:
        raise ValueError(f"RLE has an odd number of fields ({len(fields)}); expected 'start length' pairs")
    flat = np.zeros(size + 1, dtype=np.int32)
    if fields:
        try:
            pairs = np.asarray(fields, dtype=np.int64).reshape(-1, 2)
        except ValueError as exc:
            raise ValueError(f"RLE holds a non-integer field: {exc}") from None
        starts, lengths = pairs[:, 0] - 1, pairs[:, 1]
        ends = starts + lengths
        if (starts < 0).any() or (lengths < 0).any() or (ends > size).any():
            raise ValueError(f"RLE run outside a {height}x{width} image (starts are 1-indexed, size {size})")
        # Mark +1 at each start and -1 at each end; the running sum is 1 inside runs.
        np.add.at(flat, starts, 1)
        np.add.at(flat, ends, -1)
    return (np.cumsum(flat[:-1]) > 0).astype(np.uint8).reshape(height, width)
