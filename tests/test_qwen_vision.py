"""Qwen2-VL and Qwen2.5-VL vision towers exported once as ONNX (export/qwen_vision.py) run at any image grid
and match transformers' ``get_image_features`` on every grid, including grids the export never saw."""

from __future__ import annotations

import numpy as np
import pytest

# (width, height) of the input images: the processor's smallest grid (4 x 4 patches), non-square grids both
# ways, an odd merged size, and the policy's 448² (32 x 32 patches: 4 x 4 windows of Qwen2.5-VL's 4 x 4
# merged patches)
SIZES = [(56, 56), (200, 120), (120, 330), (100, 37), (448, 448)]


def _image(width, height, seed=0):
    from PIL import Image

    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def towers(tiny_dirs, tmp_path_factory):
    """family -> (model, processor, onnxruntime session of its exported vision graph)."""
    import onnxruntime as ort

    from export.graphs import export_vision
    from factory.models import load_model

    out = {}
    for family in ("qwen2vl", "qwen2_5_vl"):
        loaded = load_model(tiny_dirs(family), dtype="float32", device="cpu")
        path = tmp_path_factory.mktemp(f"vision_{family}") / "vision.onnx"
        export_vision(loaded.model, loaded.family, path)
        out[family] = (loaded.model, loaded.processor, ort.InferenceSession(str(path), providers=[
            "CPUExecutionProvider"]))
    return out


def _reference(model, processor, image):
    import torch

    inputs = processor.image_processor(images=[image], return_tensors="pt")
    with torch.no_grad():
        want = model.model.get_image_features(pixel_values=inputs["pixel_values"],
                                              image_grid_thw=inputs["image_grid_thw"]).pooler_output[0]
    return inputs["pixel_values"].numpy(), inputs["image_grid_thw"].numpy(), want.numpy()


@pytest.mark.parametrize("family", ["qwen2vl", "qwen2_5_vl"])
def test_vision_graph_matches_transformers_at_every_grid(towers, family):
    from export.qwen_vision import to_graph_input

    model, processor, session = towers[family]
    merge = processor.image_processor.merge_size
    assert [i.shape[:2] for i in session.get_inputs()] == [["grid_h_merged", "grid_w_merged"]]
    grids = set()
    for width, height in SIZES:
        pv, grid, want = _reference(model, processor, _image(width, height))
        got = session.run(None, {"pixel_values": to_graph_input(pv, grid, merge)})[0]
        grids.add(tuple(grid[0]))
        assert got.shape == (1, *want.shape) == (1, int(grid.prod()) // merge ** 2, model.config.text_config.hidden_size)
        gap = float(np.abs(got[0] - want).max())
        print(f"{family} {width}x{height} grid {grid[0].tolist()}: max |Δ| {gap:.1e}")
        assert gap < 1e-5, (width, height, gap)
    assert len(grids) == len(SIZES)


def test_qwen25_window_attention_is_what_makes_it_match(towers):
    """The block mask has teeth: the same tower with every block attending to the whole image is off by ten
    times the parity tolerance on a grid of several windows (the random tower's attention is nearly uniform:
    about 1e-3; the export is off by about 2e-7)."""
    import torch

    from export.qwen_vision import QwenVisionGraph, to_graph_input

    model, processor, _ = towers["qwen2_5_vl"]
    pv, grid, want = _reference(model, processor, _image(448, 448))
    graph = QwenVisionGraph(model, windows=True)
    graph.full = set(range(len(graph.visual.blocks)))
    with torch.no_grad():
        wrong = graph(torch.from_numpy(to_graph_input(pv, grid, 2)))[0].numpy()
    assert np.abs(wrong - want).max() > 1e-4


def test_graph_input_is_one_still_image():
    from export.qwen_vision import to_graph_input

    flat = np.arange(8 * 6 * 3, dtype=np.float32).reshape(8 * 6, 3)
    shaped = to_graph_input(flat, np.array([[1, 8, 6]]), 2)
    assert shaped.shape == (4, 3, 4, 3) and np.array_equal(shaped.reshape(-1, 3), flat)
    with pytest.raises(ValueError, match="one still image"):
        to_graph_input(flat, np.array([[2, 4, 6]]), 2)
