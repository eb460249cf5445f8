"""Image preprocessing in numpy + Pillow, per family, driven by the package manifest.

Mirrors the transformers processors' PIL backend (``*ImageProcessorPil``) for the single-image policy the
registry sets (no tiling, no splitting): convert to RGB, resize, rescale, normalize, channels first.
Tested equal to the HF PIL processor; the default torchvision processor resizes with a slightly
different bicubic kernel (tests bound that gap too).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

MAX_PIXELS = 64_000_000  # refuse decompression bombs before decoding the pixels


def load_image(source) -> Image.Image:
    """An RGB PIL image from a path, bytes-like file or PIL image; clear errors for non-images."""
    if isinstance(source, Image.Image):
        img = source
    else:
        try:
            img = Image.open(source)
        except Image.DecompressionBombError as exc:
            raise ValueError(f"image refused: {exc}") from None
        except (OSError, ValueError) as exc:
            raise ValueError(f"not a readable image: {source!r} ({exc})") from None
    if img.width * img.height > MAX_PIXELS:
        raise ValueError(f"image is {img.width}x{img.height} pixels, over the {MAX_PIXELS:,} pixel limit")
    return img.convert("RGB")


def resize_normalize(img: Image.Image, spec: dict) -> np.ndarray:
    """InternVL (GotOcr2 PIL processor, one tile): resize to height x width, rescale, normalize."""
    img = img.resize((spec["width"], spec["height"]), resample=Image.Resampling(spec["resample"]))
    arr = np.asarray(img, dtype=np.float32) * np.float32(spec["rescale_factor"])
    arr = (arr - np.asarray(spec["mean"], dtype=np.float32)) / np.asarray(spec["std"], dtype=np.float32)
    return arr.transpose(2, 0, 1)[None].astype(np.float32)


#: manifest["image"]["kind"] -> function(PIL image, spec) -> pixel_values [1, 3, H, W]
PREPROCESSORS = {"resize_normalize": resize_normalize}


def preprocess(source, spec: dict) -> np.ndarray:
    kind = spec["kind"]
    if kind not in PREPROCESSORS:
        raise ValueError(f"this runtime has no image preprocessing {kind!r}; known: {sorted(PREPROCESSORS)}")
    return PREPROCESSORS[kind](load_image(source), spec)
