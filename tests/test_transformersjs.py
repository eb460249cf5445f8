"""``svlm export --layout transformers.js``, judged by transformers.js itself: Node loads the exported folder offline
(``tests/js/check_package.mjs``, the library pinned in ``tests/js/package.json``) and its prompt ids, tokens and
labels are compared with Python's processor and PyTorch; a headless Chromium runs ``demo/web`` on it.

Default suite: an untrained tiny SmolVLM (real tokenizer), fp32 and q4 in Node on 2 images, the graph surgery's
contract (``num_logits_to_keep``, the ``batch_size`` cache axis) and the InternVL refusal. Slow: a tiny SmolVLM
trained to answer ``<answer>label</answer>``, all three dtypes on 32 held-out images, and the browser page.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

JS = Path(__file__).parent / "js"
REPO = Path(__file__).parent.parent
DTYPE_OF = {"fp32": "fp32", "int8": "int8", "int4": "q4"}


def require_transformers_js() -> Path:
    """The pinned transformers.js under tests/js/node_modules; without node or the package the tests skip, or
    fail where SVLM_REQUIRE_NODE=1 (.ci/run installs both and sets it: CI must not pass by skipping)."""
    from export.transformersjs import TRANSFORMERS_JS_VERSION

    package = JS / "node_modules" / "@huggingface" / "transformers" / "package.json"
    reason = ("node is not installed" if shutil.which("node") is None else
              None if package.is_file() else
              "transformers.js is not installed (ONNXRUNTIME_NODE_INSTALL=skip npm ci --prefix tests/js)")
    if reason:
        if os.environ.get("SVLM_REQUIRE_NODE") == "1":
            pytest.fail(f"SVLM_REQUIRE_NODE=1 but the transformers.js tests cannot run: {reason}")
        pytest.skip(reason)
    version = json.loads(package.read_text())["version"]
    assert version == TRANSFORMERS_JS_VERSION, f"tests/js has transformers.js {version}, the export writes for " \
                                               f"{TRANSFORMERS_JS_VERSION}"
    return package


def run_node(folder: Path, images: list[Path], pixels: list[np.ndarray], dtypes: list[str], question: str,
             max_new_tokens: int, work: Path) -> dict:
    """tests/js/check_package.mjs on ``folder``: Python's ``pixels`` ([1, 3, H, W] each) fed in as the library's
    5-D pixel values, and the library's own preprocessing of ``images``."""
    require_transformers_js()
    work.mkdir(parents=True, exist_ok=True)
    files = []
    for i, pv in enumerate(pixels):
        files.append(work / f"python_{i}.f32")
        files[-1].write_bytes(np.ascontiguousarray(pv, np.float32).tobytes())
    spec = {"model_dir": str(folder), "dtypes": dtypes, "question": question, "max_new_tokens": max_new_tokens,
            "images": [str(p) for p in images], "python_pixels": [str(f) for f in files],
            "pixel_shape": [1, *pixels[0].shape], "pixels_out": str(work / "own"), "out": str(work / "result.json")}
    (work / "spec.json").write_text(json.dumps(spec))
    proc = subprocess.run(["node", str(JS / "check_package.mjs"), str(work / "spec.json")], capture_output=True,
                          text=True, timeout=900, env={**os.environ, "NODE_PATH": str(JS / "node_modules")})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((work / "result.json").read_text())


def python_side(processor, images, style: str):
    """Python's prompt (string and ids) and pixel values ([1, 3, H, W]) for ``images``."""
    from PIL import Image

    from factory.prompts import render_prompt

    prompt = render_prompt(processor, style)
    ids, pixels = None, []
    for path in images:
        inputs = processor(images=[[Image.open(path).convert("RGB")]], text=[prompt], return_tensors="np")
        ids = inputs["input_ids"][0].tolist()
        pixels.append(inputs["pixel_values"].reshape(-1, *inputs["pixel_values"].shape[-3:]))
    return prompt, ids, pixels


# --- default suite: an untrained tiny SmolVLM ------------------------------------------------------------------
@pytest.fixture(scope="module")
def random_export(tiny_dirs, tmp_path_factory):
    from export.build import ExportConfig, export

    out = tmp_path_factory.mktemp("tjs_random") / "export-transformers.js"
    manifests = export(ExportConfig(model=str(tiny_dirs("smolvlm")), out=str(out), layout="transformers.js",
                                    quant=["fp32", "int4"], validate_images=2, max_new_tokens=8))
    return out, manifests


def test_layout_writes_what_transformers_js_reads(random_export):
    from export.transformersjs import ROOT_FILES, onnx_file

    out, manifests = random_export
    assert set(manifests) == {"fp32", "int4"}
    for quant in manifests:
        assert all((out / onnx_file(g, quant)).is_file() for g in ("vision", "embed", "decoder"))
    assert not (out / "onnx" / "decoder_model_merged_int8.onnx").exists()  # only the asked quantizations
    assert all((out / f).is_file() for f in ROOT_FILES)
    pre = json.loads((out / "preprocessor_config.json").read_text())
    assert pre["processor_class"] == "SmolVLMProcessor" and pre["do_image_splitting"] is False  # flat, policy applied
    assert "chat_template" in json.loads((out / "tokenizer_config.json").read_text())
    card = (out / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: transformers.js\n")
    manifest = json.loads((out / "manifest.json").read_text())
    fp32 = manifest["quantizations"]["fp32"]["validation"]  # validated in the export, as transformers.js runs it
    assert fp32["greedy_tokens_identical"] == 1.0 and fp32["max_abs_logit_diff"] < 1e-4
    for m in manifest["quantizations"].values():
        assert all((out / rel).stat().st_size == f["bytes"] for rel, f in m["files"].items())


def test_decoder_keeps_the_last_k_logits_and_builds_its_cache_from_batch_size(random_export):
    """The decoder contract transformers.js relies on: num_logits_to_keep k gives the last k positions' logits (0:
    all, more than the sequence: all), and the first cache, built from the graph's symbolic dims, has the batch."""
    from export.transformersjs import TransformersJsRunner

    out, _ = random_export
    manifest = json.loads((out / "manifest.json").read_text())
    runner = TransformersJsRunner(out, "fp32", manifest["prompt"]["input_ids"])
    embeds = np.random.default_rng(0).standard_normal((2, 5, manifest["text"]["hidden"])).astype(np.float32)
    logits = {k: runner._decode(embeds, runner._empty_cache(2), k)[0] for k in (0, 1, 3, 9)}
    assert logits[0].shape[:2] == (2, 5) and logits[9].shape[:2] == (2, 5)
    assert logits[1].shape[:2] == (2, 1) and logits[3].shape[:2] == (2, 3)
    np.testing.assert_allclose(logits[3], logits[0][:, -3:], atol=1e-5)
    np.testing.assert_allclose(logits[1], logits[0][:, -1:], atol=1e-5)
    cache = runner._empty_cache(2)
    assert all(v.shape[0] == 2 and v.shape[2] == 0 for v in cache.values())
    assert sorted(cache) == sorted(f"past_key_values.{i}.{kv}" for i in range(manifest["text"]["layers"])
                                   for kv in ("key", "value"))


def test_node_loads_the_export_offline_with_pythons_prompt_and_pytorchs_tokens(random_export, tiny_dirs, synth_root,
                                                                               tmp_path):
    """transformers.js in Node: its chat template and processor give Python's prompt ids, and with Python's pixel
    values its greedy tokens are PyTorch's (fp32) on real images."""
    from PIL import Image

    from export.build import _torch_reference
    from export.compare import until_eos
    from factory.models import load_model
    from factory.prompts import question

    out, _ = random_export
    images = sorted((synth_root / "image").rglob("*.jpg"))[:2]
    loaded = load_model(str(tiny_dirs("smolvlm")), dtype="float32", device="cpu")
    prompt, ids, pixels = python_side(loaded.processor, images, "cot")
    result = run_node(out, images, pixels, ["fp32", "q4"], question("cot"), 8, tmp_path)
    assert result["prompt"] == prompt and result["prompt_ids"] == ids
    refs = _torch_reference(loaded.model.eval(), loaded.processor, [Image.open(p).convert("RGB") for p in images],
                            8, "cot")
    eos = set(json.loads((out / "generation_config.json").read_text())["eos_token_id"])
    fp32 = result["dtypes"]["fp32"]
    assert fp32["class"] == "SmolVLMForConditionalGeneration"
    assert [until_eos(r["tokens"], eos) for r in fp32["python_pixels"]] == \
        [until_eos(r["tokens"], eos) for r in refs]
    assert all(r["tokens"] for r in result["dtypes"]["q4"]["python_pixels"])  # loaded and generating


def test_internvl_is_refused_with_the_registry_reason(tiny_dirs, tmp_path):
    from export.build import ExportConfig, ExportError, export

    with pytest.raises(ExportError, match="no InternVL model class"):
        export(ExportConfig(model=str(tiny_dirs("internvl")), out=str(tmp_path / "x"), layout="transformers.js"))
    assert not (tmp_path / "x").exists() and not (tmp_path / "x.tmp").exists()


@pytest.mark.parametrize("required", ["1", None])
def test_missing_transformers_js_fails_where_it_is_required(monkeypatch, required):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    if required:
        monkeypatch.setenv("SVLM_REQUIRE_NODE", required)
    else:
        monkeypatch.delenv("SVLM_REQUIRE_NODE", raising=False)
    with pytest.raises(pytest.fail.Exception if required else pytest.skip.Exception):
        require_transformers_js()
