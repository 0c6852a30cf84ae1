"""The review page ``carvana predict`` writes: a static HTML contact sheet of the photos an editor
should look at (review flag or per-car check), each with the mask's outline drawn on it.

One self-contained folder (``review/index.html`` and ``review/thumbs/*.jpg``, relative links) that
opens from disk in any browser, no server and no script needed to show the photos.
"""

from __future__ import annotations

import html
import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from trainer.atomic import atomic_path

THUMB_WIDTH = 480
OUTLINE = (255, 32, 64)


def outline(mask: np.ndarray) -> np.ndarray:
    """The mask's boundary pixels, 2 px wide: car pixels with a background pixel within one step,
    grown by one step so the line shows at thumbnail size."""
    car = mask.astype(bool)
    padded = np.pad(car, 1, mode="edge")
    inner = car & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    edge = car & ~inner
    grown = np.pad(edge, 1)
    return edge | grown[:-2, 1:-1] | grown[2:, 1:-1] | grown[1:-1, :-2] | grown[1:-1, 2:]


def write_thumbnail(photo: np.ndarray, car: np.ndarray, path: Path) -> None:
    """A JPEG of the photo (uint8 RGB, display orientation) THUMB_WIDTH wide with the outline of its
    mask (0/1, the same size) in red."""
    rgb = Image.fromarray(photo)
    mask = Image.fromarray(car * 255)
    height = max(1, round(rgb.height * THUMB_WIDTH / rgb.width))
    small = np.array(rgb.resize((THUMB_WIDTH, height), Image.Resampling.BILINEAR))
    small_mask = np.asarray(mask.resize((THUMB_WIDTH, height), Image.Resampling.BILINEAR)) > 127
    small[outline(small_mask)] = OUTLINE
    out = io.BytesIO()
    Image.fromarray(small).save(out, format="JPEG", quality=85)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_bytes(out.getvalue())


def _reasons(record: Mapping[str, Any], checks: Mapping[str, Sequence[str]]) -> list[str]:
    review = record["review"]
    reasons = []
    if review["needs_review"]:
        reasons.append(
            f"confidence {review['confidence']:.3f} (flip disagreement {review['flip_disagreement']:.4f}, "
            f"fragments {review['fragments']:.4f}, uncertain {review['uncertain']:.4f})"
        )
    reasons.extend(checks.get(record["photo"], []))
    return reasons


def write_review_page(
    path: Path, flagged: Sequence[Mapping[str, Any]], checks: Mapping[str, Sequence[str]], *, total: int
) -> None:
    """``review/index.html``: one card per flagged photo (thumbnail, name, why), least confident first."""
    order = sorted(flagged, key=lambda r: r["review"]["confidence"])
    cards = []
    for record in order:
        stem, photo = html.escape(record["stem"]), html.escape(record["photo"])
        why = "".join(f"<li>{html.escape(reason)}</li>" for reason in _reasons(record, checks))
        cards.append(
            f'<figure class="photo" data-photo="{photo}"><img src="thumbs/{stem}.jpg" alt="{photo}" '
            f'width="{THUMB_WIDTH}"><figcaption><b>{photo}</b><ul>{why}</ul></figcaption></figure>'
        )
    body = "\n".join(cards) or "<p>No photo needs review.</p>"
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>carvana review: {len(flagged)} of {total} photos</title>
<style>body{{font-family:sans-serif;margin:1em;background:#f4f4f4}}
figure{{display:inline-block;vertical-align:top;margin:.5em;padding:.5em;background:#fff;width:{THUMB_WIDTH}px}}
figcaption{{font-size:13px}} ul{{margin:.3em 0;padding-left:1.2em}}</style></head>
<body><h1>{len(flagged)} of {total} photos need review</h1>
<p>Red: the outline of the model's mask. Least confident first.</p>
{body}
</body></html>
"""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_text(page, encoding="utf-8")
