"""Drawing detections on images."""

from __future__ import annotations

import colorsys
from collections.abc import Sequence

from PIL import Image, ImageDraw, ImageFont


def class_color(label: int) -> tuple[int, int, int]:
    """A stable, distinct colour per category id (golden-ratio hue steps)."""
    hue = (label * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.85, 0.95)
    return int(r * 255), int(g * 255), int(b * 255)


def parse_color(value: str | Sequence[int]) -> tuple[int, int, int]:
    """A colour from a name ('red'), '#rrggbb' or an (r, g, b) list."""
    if isinstance(value, str):
        from PIL import ImageColor

        return ImageColor.getrgb(value)[:3]
    r, g, b = (int(v) for v in value)
    return r, g, b


def draw_detections(
    image: Image.Image,
    boxes: Sequence[Sequence[float]],
    labels: Sequence[str],
    scores: Sequence[float],
    colors: Sequence[tuple[int, int, int]],
    outline_width: int = 3,
) -> Image.Image:
    """A copy of ``image`` with each box (x1, y1, x2, y2 pixels) outlined and captioned "name: score"."""
    out = image.convert("RGB").copy()
    draw = ImageDraw.Draw(out)
    font = ImageFont.load_default()
    for box, label, score, color in zip(boxes, labels, scores, colors):
        x1, y1, x2, y2 = (float(v) for v in box)
        draw.rectangle([x1, y1, x2, y2], outline=color, width=outline_width)
        text = f"{label}: {score:.2f}"
        left, top, right, bottom = draw.textbbox((x1, y1), text, font=font)
        ty = y1 - (bottom - top) - 2 if y1 - (bottom - top) - 2 >= 0 else y1
        draw.rectangle([x1, ty, x1 + (right - left) + 4, ty + (bottom - top) + 2], fill=color)
        draw.text((x1 + 2, ty), text, fill=(0, 0, 0), font=font)
    return out
