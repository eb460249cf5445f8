"""Image preprocessing in numpy + Pillow, driven by the package manifest (the registry writes the spec).

Mirrors the transformers processors' PIL backend (``*ImageProcessorPil``) for the single-image policy the
registry sets (no tiling, no splitting): convert to RGB, resize, rescale, normalize, channels first.
``resize_normalize`` is InternVL's (GotOcr2), ``longest_edge_square`` SmolVLM's. Tested equal to the HF PIL
processors; the default torchvision processors resize with slightly different kernels (tests bound that
gap too).
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


def _normalize(img: Image.Image, spec: dict) -> np.ndarray:
    arr = np.asarray(img, dtype=np.float32) * np.float32(spec["rescale_factor"])
    arr = (arr - np.asarray(spec["mean"], dtype=np.float32)) / np.asarray(spec["std"], dtype=np.float32)
    return arr.transpose(2, 0, 1)[None].astype(np.float32)


def resize_normalize(img: Image.Image, spec: dict) -> np.ndarray:
    """InternVL (GotOcr2 PIL processor, one tile): resize to height x width, rescale, normalize."""
    img = img.resize((spec["width"], spec["height"]), resample=Image.Resampling(spec["resample"]))
    return _normalize(img, spec)


MAX_SIDE = 4096  # SmolVLM's absolute cap on the first resize (transformers' MAX_IMAGE_SIZE)


def _longest_edge_size(width: int, height: int, longest: int) -> tuple[int, int]:
    """SmolVLM's first resize target: the longest edge to ``longest`` (the other side even), kept ≤ 4096."""
    aspect = width / height
    if width >= height:
        width, height = longest, int(longest / aspect)
        height += height % 2
    else:
        height, width = longest, int(longest * aspect)
        width += width % 2
    height, width = max(height, 1), max(width, 1)
    aspect = width / height
    if width >= height and width > MAX_SIDE:
        width, height = MAX_SIDE, int(MAX_SIDE / aspect)
    elif height > width and height > MAX_SIDE:
        height, width = MAX_SIDE, int(MAX_SIDE * aspect)
    return max(width, 1), max(height, 1)


def longest_edge_square(img: Image.Image, spec: dict) -> np.ndarray:
    """SmolVLM (PIL processor, no splitting): longest edge to ``longest_edge`` keeping the aspect ratio, then
    a ``side`` x ``side`` square (the vision encoder's input), rescale, normalize. Both resizes go through
    8-bit PIL images, as the HF PIL processor does."""
    resample = Image.Resampling(spec["resample"])
    img = img.resize(_longest_edge_size(img.width, img.height, spec["longest_edge"]), resample=resample)
    img = img.resize((spec["side"], spec["side"]), resample=resample)
    return _normalize(img, spec)


def qwen_patches(img: Image.Image, spec: dict) -> np.ndarray:
    """Qwen2-VL / Qwen2.5-VL (PIL processor, one still image): ``smart_resize`` to multiples of patch x merge
    within the pixel bounds, rescale, normalize, then the processor's patches (each repeated over the temporal
    patch) in merge-block order, shaped [grid_h / m, grid_w / m, m², 3 * t * p * p] as the vision graph takes
    them (export/qwen_vision.py): the grid is in the shape, so any image size runs."""
    from svlm_runtime.gguf import smart_resize  # one copy of the rule (imported here: gguf imports package)

    p, m, t = spec["patch_size"], spec["merge_size"], spec["temporal_patch_size"]
    h, w = smart_resize(img.height, img.width, p * m, spec["min_pixels"], spec["max_pixels"])
    if img.size != (w, h):
        img = img.resize((w, h), resample=Image.Resampling(spec["resample"]))
    arr = _normalize(img, spec)[0]  # [3, h, w]
    gh, gw = h // p, w // p
    patches = arr.reshape(3, gh // m, m, p, gw // m, m, p).transpose(1, 4, 2, 5, 0, 3, 6)  # (bh, bw, mh, mw, c, p, p)
    patches = np.broadcast_to(patches[:, :, :, :, :, None], (*patches.shape[:5], t, p, p))
    return np.ascontiguousarray(patches.reshape(gh // m, gw // m, m * m, 3 * t * p * p), dtype=np.float32)


#: manifest["image"]["kind"] -> function(PIL image, spec) -> the vision graph's pixel_values ([1, 3, H, W] but
#: for Qwen's patch grids)
PREPROCESSORS = {"resize_normalize": resize_normalize, "longest_edge_square": longest_edge_square,
                 "qwen_patches": qwen_patches}


def preprocess(source, spec: dict) -> np.ndarray:
    kind = spec["kind"]
    if kind not in PREPROCESSORS:
        raise ValueError(f"this runtime has no image preprocessing {kind!r}; known: {sorted(PREPROCESSORS)}")
    return PREPROCESSORS[kind](load_image(source), spec)
