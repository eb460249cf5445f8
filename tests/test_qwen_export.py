"""Qwen2-VL and Qwen2.5-VL in the project's own ONNX layout (issue 17): the dynamic-grid vision graph, an
M-RoPE decoder and svlm-runtime's port of the positions, the per-image prompt length and the preprocessing.
The packages match PyTorch at image sizes of several grids, not only the one the export validated on."""

from __future__ import annotations

import numpy as np
import pytest

from export.build import ExportConfig, torch_reference, export
from export.compare import compare
from svlm_runtime.package import Package, PackageError

# (width, height): grids of 6x6, 8x14, 24x8 and 32x32 patches (the policy's 448² cap), and one above the cap
SIZES = [(84, 84), (200, 120), (120, 330), (448, 448), (900, 500)]


def _image(width, height, seed=0):
    from PIL import Image

    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8))


def _check_package(family, tiny_dirs, tmp_path, quants):
    """Export, then hold the fp32 package to PyTorch on images of every size in SIZES; returns the manifests."""
    from factory.models import load_model

    manifests = export(ExportConfig(model=str(tiny_dirs(family)), out=str(tmp_path / "e"), quant=quants,
                                    validate_images=2, max_new_tokens=10))
    fp32 = manifests["fp32"]
    assert fp32["text"]["positions"] == "mrope" and fp32["image"]["kind"] == "qwen_patches"
    assert fp32["validation"]["greedy_tokens_identical"] == 1.0 and fp32["validation"]["max_abs_logit_diff"] <= 1e-4
    loaded = load_model(tiny_dirs(family), dtype="float32", device="cpu")
    pkg = Package(tmp_path / "e" / "fp32")
    refs = torch_reference(loaded.model, loaded.processor, [_image(w, h, i) for i, (w, h) in enumerate(SIZES)], 10)
    grids = set()
    for (w, h), ref in zip(SIZES, refs):
        v = compare(pkg, [ref], 10)
        grids.add(ref["pixel_values"].shape[:2])
        print(f"{family} fp32 {w}x{h} merged grid {ref['pixel_values'].shape[:2]}: max |Δlogits| "
              f"{v['max_abs_logit_diff']:.1e}, greedy tokens identical {v['greedy_tokens_identical']:.0%}")
        assert v["max_abs_logit_diff"] <= 1e-4 and v["greedy_tokens_identical"] == 1.0, (w, h, v)
    assert len(grids) == len(SIZES)
    return manifests, loaded, pkg


@pytest.mark.slow  # ~55 s: the default suite checks the vision graph (test_qwen_vision.py) and the runtime parts below
def test_qwen25_vl_exports_and_matches_pytorch_at_every_image_size(tiny_dirs, tmp_path):
    manifests, loaded, pkg = _check_package("qwen2_5_vl", tiny_dirs, tmp_path, ["fp32", "int8"])
    # the int8 package runs at another size too and says what it measured
    v = manifests["int8"]["validation"]
    assert np.isfinite(v["max_abs_logit_diff"]) and v["images"] == 2
    gen = Package(tmp_path / "e" / "int8").generate(_image(300, 160), max_new_tokens=6)
    assert len(gen.token_ids) <= 6 and abs(sum(gen.label_probs.values()) - 1) < 1e-6


@pytest.mark.slow
def test_qwen2_vl_exports_and_matches_pytorch_at_every_image_size(tiny_dirs, tmp_path):
    _check_package("qwen2vl", tiny_dirs, tmp_path, ["fp32"])


def test_runtime_preprocessing_equals_the_hf_pil_processor(tiny_processors):
    """smart_resize, normalization and the patch order of svlm-runtime's numpy port equal transformers'
    Qwen2-VL PIL processor, at every size (the processor's policy-capped settings)."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from export.qwen_vision import to_graph_input
    from factory.families import get_family
    from svlm_runtime.preprocess import preprocess

    ip = tiny_processors("qwen2_5_vl").image_processor
    spec = get_family("qwen2_5_vl").image_spec(tiny_processors("qwen2_5_vl"))
    assert spec["max_pixels"] == 448 * 448  # the image policy's cap, not the checkpoint's 12.8 MP
    pil = Qwen2VLImageProcessorPil(size={"shortest_edge": spec["min_pixels"], "longest_edge": spec["max_pixels"]},
                                   patch_size=ip.patch_size, merge_size=ip.merge_size, image_mean=spec["mean"],
                                   image_std=spec["std"], resample=spec["resample"],
                                   temporal_patch_size=ip.temporal_patch_size)
    for w, h in SIZES + [(33, 90)]:
        img = _image(w, h)
        ours = preprocess(img, spec)
        ref = pil(images=[img], return_tensors="np")
        want = to_graph_input(ref["pixel_values"], ref["image_grid_thw"], ip.merge_size)
        assert ours.shape == want.shape and np.abs(ours - want).max() < 1e-5, (w, h)


def test_mrope_positions_follow_transformers(tiny_dirs):
    """The runtime's M-RoPE prompt positions and decode offset equal transformers' ``get_rope_index`` for a
    non-square grid (rows != columns, so a swapped axis would show)."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from factory.prompts import render_prompt

    family = "qwen2_5_vl"
    model = AutoModelForImageTextToText.from_pretrained(tiny_dirs(family)).eval()
    processor = AutoProcessor.from_pretrained(tiny_dirs(family))
    inputs = processor(images=[[_image(200, 120)]], text=[render_prompt(processor)], return_tensors="pt")
    want, delta = model.model.get_rope_index(inputs["input_ids"], inputs["mm_token_type_ids"],
                                             image_grid_thw=inputs["image_grid_thw"])

    class Probe(Package):  # the position rule alone, without graphs
        def __init__(self, prompt_ids):
            self.mrope, self.image_token_id = True, model.config.image_token_id
            self.prompt_ids = np.asarray(prompt_ids, np.int64)

    _, h, w = inputs["image_grid_thw"][0].tolist()
    assert h != w
    ids, positions, got_delta = Probe(inputs["input_ids"][0].numpy())._prompt(h * w // 4, (h // 2, w // 2))
    assert np.array_equal(ids, inputs["input_ids"][0].numpy())
    assert np.array_equal(positions, want[:, 0].numpy()) and got_delta == int(delta[0, 0])
    # the stored prompt's image run is re-expanded to the image's token count
    short = Probe([1, 2, model.config.image_token_id, 3, 4])
    ids, positions, _ = short._prompt(6, (2, 3))
    assert ids.tolist() == [1, 2] + [short.image_token_id] * 6 + [3, 4] and positions.shape == (3, 10)
    with pytest.raises(PackageError, match="cannot fill"):
        short._prompt(5, (2, 3))
