"""Display of DRRs: 8-bit windowing, PNG files and a labelled contact sheet.

DRRs are shown like radiographs: the line integral is mapped linearly to grey, so
air (integral 0) is dark and bone, contrast and metal are bright. Images are written as
stored: row 0 is the top of the picture, which :func:`drrkit.circular_orbit` makes the
patient's superior side.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from drrkit.errors import DrrkitError

#: Default display window, as percentiles of the line integrals (see :func:`display_window`).
LOW_PERCENTILE = 0.5
HIGH_PERCENTILE = 99.8
#: Pixels sampled at most when estimating the window (a regular subsample beyond that).
WINDOW_SAMPLES = 2_000_000


def display_window(
    images: np.ndarray, low: float = LOW_PERCENTILE, high: float = HIGH_PERCENTILE
) -> tuple[float, float]:
    """A robust grey-level window shared by all images.

    The lower bound is the ``low`` percentile of all finite pixels; the upper bound is
    the ``high`` percentile of the pixels above the lower bound, so a large air
    background does not pull the window down. Non-finite pixels are ignored.

    Args:
        images: (..., H, W) line integrals (dimensionless).
        low, high: percentiles in [0, 100], low < high.

    Returns:
        (lower, upper) with upper > lower, in the images' units.
    """
    if not 0.0 <= low < high <= 100.0:
        raise DrrkitError(f"need 0 <= low < high <= 100 percentiles, got {low}, {high}")
    values = np.asarray(images, dtype=np.float32).reshape(-1)
    if values.size > WINDOW_SAMPLES:
        values = values[:: math.ceil(values.size / WINDOW_SAMPLES)]
    values = values[np.isfinite(values)]
    if values.size == 0:
        return 0.0, 1.0
    lower = float(np.percentile(values, low))
    above = values[values > lower]
    upper = float(np.percentile(above, high)) if above.size else lower
    if not upper > lower:
        upper = lower + max(abs(lower), 1.0) * 1e-6 if lower else 1.0
    return lower, upper


def to_uint8(images: np.ndarray, window: tuple[float, float] | None = None) -> np.ndarray:
    """Map line integrals to 8-bit grey, radiograph style (high integral = bright).

    Args:
        images: (..., H, W) line integrals.
        window: (lower, upper) mapped to 0 and 255; default :func:`display_window`.

    Returns:
        (..., H, W) uint8; values outside the window are clipped, NaN shows as 0.
    """
    images = np.asarray(images, dtype=np.float32)
    lower, upper = display_window(images) if window is None else window
    if not upper > lower:
        raise DrrkitError(f"display window must have upper > lower, got {window}")
    scaled = (images - np.float32(lower)) * np.float32(255.0 / (upper - lower))
    scaled = np.nan_to_num(scaled, nan=0.0, posinf=255.0, neginf=0.0)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def save_png(path: str | Path, image: np.ndarray) -> None:
    """Write a (H, W) uint8 image as an 8-bit greyscale PNG (row 0 at the top)."""
    from PIL import Image

    image = np.asarray(image)
    if image.ndim != 2 or image.dtype != np.uint8:
        raise DrrkitError(f"save_png needs a (H, W) uint8 image, got {image.dtype} {image.shape}")
    Image.fromarray(image).save(Path(path), format="PNG")


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has only the fixed bitmap font
        return ImageFont.load_default()


def contact_sheet(
    images: np.ndarray,
    labels: list[str] | None = None,
    *,
    columns: int | None = None,
    tile: int = 256,
    min_tile: int = 128,
    gap: int = 4,
):
    """All views in one labelled grid.

    Each image is scaled to fit a ``tile`` x ``tile`` box (keeping its aspect ratio;
    small images are enlarged to at least ``min_tile`` with nearest-neighbour pixels) and
    gets a caption strip above it.

    Args:
        images: (K, H, W) uint8.
        labels: K captions (default "view k").
        columns: tiles per row (default ceil(sqrt(K))).
        tile, min_tile: largest and smallest tile side in pixels.
        gap: pixels between tiles.

    Returns:
        a PIL greyscale ("L") image.
    """
    from PIL import Image, ImageDraw

    images = np.asarray(images)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise DrrkitError(f"contact_sheet needs (K, H, W) uint8, got {images.dtype} {images.shape}")
    k, h, w = images.shape
    if k < 1:
        raise DrrkitError("contact_sheet needs at least one image")
    labels = [f"view {i}" for i in range(k)] if labels is None else list(labels)
    if len(labels) != k:
        raise DrrkitError(f"contact_sheet got {len(labels)} labels for {k} images")
    columns = columns or math.ceil(math.sqrt(k))
    rows = math.ceil(k / columns)
    scale = min(tile / max(h, w), 1.0)
    if max(h, w) * scale < min_tile:
        scale = min_tile / max(h, w)
    tw, th = max(1, round(w * scale)), max(1, round(h * scale))
    font_size = max(10, min(18, tw // 12))
    caption = font_size + 6
    sheet = Image.new("L", (columns * tw + (columns + 1) * gap,
                            rows * (th + caption) + (rows + 1) * gap), color=40)
    draw = ImageDraw.Draw(sheet)
    font = _font(font_size)
    resample = Image.Resampling.BOX if scale < 1 else Image.Resampling.NEAREST
    for index in range(k):
        r, c = divmod(index, columns)
        x = gap + c * (tw + gap)
        y = gap + r * (th + caption + gap)
        picture = Image.fromarray(images[index])
        if (tw, th) != (w, h):
            picture = picture.resize((tw, th), resample)
        draw.text((x + 3, y + 2), labels[index], fill=255, font=font)
        sheet.paste(picture, (x, y + caption))
    return sheet


def view_labels(angles_deg: np.ndarray) -> list[str]:
    """Captions "k: angle" for a contact sheet, e.g. ``"0: 0°"``; "k" alone if no angle."""
    labels = []
    for k, angle in enumerate(np.asarray(angles_deg, dtype=np.float64).reshape(-1)):
        labels.append(f"{k}: {angle:g}\N{DEGREE SIGN}" if math.isfinite(angle) else f"{k}")
    return labels
