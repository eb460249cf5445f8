"""The runtime's numpy preprocessing against transformers' processors, without a model (a few seconds).

The specs are the ones export writes (``Family.image_spec``) for processors built from the real
checkpoints' settings in ``factory/assets/hf``, with the image policy applied (one tile / no splitting).
"""

from __future__ import annotations

import io
import json
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from svlm_runtime.preprocess import MAX_PIXELS, _longest_edge_size, load_image, preprocess
from factory import assets
from factory.families import get_family


def _settings(name: str, filename: str) -> dict:
    data = assets.read_json(name, filename)
    return data.get("image_processor", data)


@pytest.fixture(scope="module")
def internvl():
    """(spec, HF PIL processor, HF torchvision processor) with InternVL3-1B's settings, one tile."""
    from transformers.models.got_ocr2.image_processing_got_ocr2 import GotOcr2ImageProcessor
    from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil

    cfg = _settings("internvl3-1b-hf", "processor_config.json")
    kw = dict(size=cfg["size"], image_mean=cfg["image_mean"], image_std=cfg["image_std"], resample=cfg["resample"],
              crop_to_patches=False)
    pil = GotOcr2ImageProcessorPil(**kw)
    spec = get_family("internvl").image_spec(SimpleNamespace(image_processor=pil))
    return spec, pil, GotOcr2ImageProcessor(**kw)


@pytest.fixture(scope="module")
def smolvlm():
    from transformers.models.smolvlm.image_processing_pil_smolvlm import SmolVLMImageProcessorPil

    cfg = _settings("smolvlm-256m-instruct", "preprocessor_config.json")
    pil = SmolVLMImageProcessorPil(size=cfg["size"], max_image_size=cfg["max_image_size"],
                                   image_mean=cfg["image_mean"], image_std=cfg["image_std"],
                                   resample=cfg["resample"], do_image_splitting=False)
    return get_family("smolvlm").image_spec(SimpleNamespace(image_processor=pil)), pil


def _images() -> list[Image.Image]:
    """A smooth photo-like picture, noise of odd shapes (landscape, portrait), grayscale, RGBA, a sliver."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:120, 0:160]
    smooth = np.stack([x * 1.5, y * 2.0, (x + y) * 0.8], -1).clip(0, 255).astype(np.uint8)
    return [Image.fromarray(smooth),
            Image.fromarray(rng.integers(0, 256, (30, 71, 3), dtype=np.uint8)),
            Image.fromarray(rng.integers(0, 256, (90, 41, 3), dtype=np.uint8)),
            Image.fromarray(rng.integers(0, 256, (50, 40), dtype=np.uint8)),  # grayscale
            Image.fromarray(rng.integers(0, 256, (33, 33, 4), dtype=np.uint8), "RGBA"),
            Image.fromarray(rng.integers(0, 256, (3, 200, 3), dtype=np.uint8)),
            Image.fromarray(rng.integers(0, 256, (600, 800, 3), dtype=np.uint8))]  # downscaled


def test_internvl_spec_is_the_real_checkpoints(internvl):
    spec, _, _ = internvl
    assert spec == {"kind": "resize_normalize", "height": 448, "width": 448, "resample": 3,
                    "rescale_factor": pytest.approx(1 / 255), "mean": [0.485, 0.456, 0.406],
                    "std": [0.229, 0.224, 0.225]}


def test_internvl_preprocessing_equals_the_pil_processor(internvl):
    spec, pil, _ = internvl
    for img in _images():
        ours = preprocess(img, spec)
        ref = pil(images=[img.convert("RGB")], return_tensors="np")["pixel_values"]
        assert ours.dtype == np.float32 and ours.shape == ref.shape == (1, 3, 448, 448)
        assert np.abs(ours - ref).max() < 1e-5


def _grey_levels(diff: np.ndarray, std) -> np.ndarray:
    """A difference of normalized pixel values, in 8-bit grey levels (normalized = (x/255 - mean) / std)."""
    return np.abs(diff) * np.asarray(std, dtype=np.float32)[:, None, None] * 255


def test_internvl_preprocessing_is_near_the_default_torchvision_processor(internvl):
    """The README's figure: the default (torchvision) processor resizes with another bicubic kernel. Both
    round the resized image to 8 bits, and no pixel differs by more than two grey levels; on average under
    0.05 (measured here and on the synthetic EmoSet JPEGs: max 1-2 levels, mean ≤ 0.01)."""
    spec, _, tv = internvl
    images = _images()
    per_image = []
    for img in images:
        ours = preprocess(img, spec)
        ref = tv(images=[img.convert("RGB")], return_tensors="np")["pixel_values"]
        levels = _grey_levels(ours[0] - ref[0], spec["std"])
        per_image.append((float(levels.mean()), float(levels.max())))
    print("grey levels (mean, max) per image:", [(round(a, 2), round(b, 2)) for a, b in per_image])
    assert all(worst <= 2 + 1e-3 for _, worst in per_image)  # float32 noise on top of whole levels
    assert all(mean < 0.05 for mean, _ in per_image)


def test_smolvlm_spec_is_the_real_checkpoints(smolvlm):
    spec, _ = smolvlm
    assert (spec["kind"], spec["longest_edge"], spec["side"], spec["resample"]) == (
        "longest_edge_square", 2048, 512, 1)
    assert spec["mean"] == spec["std"] == [0.5, 0.5, 0.5]


def test_smolvlm_preprocessing_equals_the_pil_processor(smolvlm):
    spec, pil = smolvlm
    for img in _images():
        ours = preprocess(img, spec)
        ref = pil(images=[[img.convert("RGB")]], return_tensors="np")["pixel_values"]
        assert ours.shape == (1, 3, 512, 512)
        assert np.abs(ours - ref.reshape(ours.shape)).max() < 1e-5


@pytest.mark.parametrize("longest", [2048, 512, 2049, 4096, 5000, 9000])
def test_longest_edge_size_equals_transformers(longest):
    """SmolVLM's first resize target for landscape, portrait, square, odd and extreme shapes, an odd longest
    edge (which side is made even), and the 4096-pixel cap, reached exactly and from above."""
    from transformers.models.smolvlm.image_processing_pil_smolvlm import (
        MAX_IMAGE_SIZE, _resize_output_size_rescale_to_max_len, _resize_output_size_scale_below_upper_bound)

    for height, width in [(100, 100), (30, 71), (71, 30), (3, 200), (200, 3), (1, 5000), (5000, 1), (480, 641),
                          (641, 480), (999, 1000), (1000, 999), (7, 7), (1, 11), (11, 1), (3, 25), (25, 3)]:
        h, w = _resize_output_size_rescale_to_max_len(height, width, max_len=longest)
        h, w = _resize_output_size_scale_below_upper_bound(h, w, max_len=MAX_IMAGE_SIZE)
        assert _longest_edge_size(width, height, longest) == (w, h), (height, width, longest)


def test_load_image_accepts_paths_files_and_images(tmp_path):
    img = Image.fromarray(np.arange(60, dtype=np.uint8).reshape(6, 10), "L")
    img.save(tmp_path / "x.png")
    for source in (tmp_path / "x.png", str(tmp_path / "x.png"), io.BytesIO((tmp_path / "x.png").read_bytes()), img):
        out = load_image(source)
        assert out.mode == "RGB" and out.size == (10, 6)
        assert np.array_equal(np.asarray(out)[..., 1], np.asarray(img))


def test_load_image_refuses_non_images_and_decompression_bombs(tmp_path):
    (tmp_path / "notes.jpg").write_text("not an image")
    with pytest.raises(ValueError, match="not a readable image"):
        load_image(tmp_path / "notes.jpg")
    with pytest.raises(ValueError, match="not a readable image"):
        load_image(tmp_path / "missing.png")
    side = int(MAX_PIXELS ** 0.5)  # 8000 x 8000 is exactly the limit: allowed
    assert side * side == MAX_PIXELS
    Image.new("1", (side, side)).save(tmp_path / "edge.png")
    assert load_image(tmp_path / "edge.png").size == (side, side)
    Image.new("1", (side + 1, side)).save(tmp_path / "over.png")
    with pytest.raises(ValueError, match="pixel limit"):
        load_image(tmp_path / "over.png")
    with pytest.raises(ValueError, match="pixel limit"):
        load_image(Image.new("1", (side, side + 1)))


def test_unknown_preprocessing_is_refused():
    with pytest.raises(ValueError, match="no image preprocessing 'tiles'"):
        preprocess(Image.new("RGB", (4, 4)), {"kind": "tiles"})


def test_spec_survives_the_manifest(internvl):
    """The spec goes through manifest.json: JSON types only, same result."""
    spec, _, _ = internvl
    img = _images()[1]
    assert np.array_equal(preprocess(img, json.loads(json.dumps(spec))), preprocess(img, spec))


@pytest.mark.parametrize("resample", [0, 1, 2])  # nearest, Lanczos, bilinear (the real checkpoint: 3, bicubic)
def test_the_specs_resampling_kernel_is_the_one_used(resample):
    """The kernel comes from the manifest, not Pillow's default (bicubic, the same as InternVL's own)."""
    from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil

    cfg = _settings("internvl3-1b-hf", "processor_config.json")
    pil = GotOcr2ImageProcessorPil(size=cfg["size"], image_mean=cfg["image_mean"], image_std=cfg["image_std"],
                                   resample=resample, crop_to_patches=False)
    spec = get_family("internvl").image_spec(SimpleNamespace(image_processor=pil))
    assert spec["resample"] == resample
    img = _images()[1]
    ref = pil(images=[img], return_tensors="np")["pixel_values"]
    assert np.abs(preprocess(img, spec) - ref).max() < 1e-5


def test_pillows_decompression_bomb_error_becomes_a_clear_refusal(tmp_path, monkeypatch):
    """Pillow refuses to open an image over twice its MAX_IMAGE_PIXELS (a decompression bomb); the runtime
    turns that into a ValueError that says the image was refused and why."""
    Image.new("L", (20, 20)).save(tmp_path / "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 400 pixels > 2 x 100
    with pytest.raises(ValueError, match=r"image refused: .*(decompression bomb|exceeds limit)"):
        load_image(tmp_path / "bomb.png")
