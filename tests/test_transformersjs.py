"""``svlm export --layout transformers.js``, judged by transformers.js itself: Node loads the exported folder offline
(``tests/js/check_package.mjs``, the library pinned in ``tests/js/package.json``) and its prompt ids, tokens and
labels are compared with Python's processor and PyTorch; a headless Chromium runs ``demo/web`` on it.

Default suite (~30 s here): an untrained tiny SmolVLM (real tokenizer; graphs stored with external data), fp32 and
q4 in Node on 2 images; the small tokenizer with the project's chat template in Node; the graph surgery's contract
(``num_logits_to_keep``, the ``batch_size`` cache axis); the InternVL refusal; serve.py's refusal. Slow (~2 min): a
tiny SmolVLM trained to answer ``<answer>label</answer>``, all three dtypes on 32 held-out images in Node, and the
browser page in headless Chromium.
"""

from __future__ import annotations

import collections
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
    """fp32 and int4 of the untrained tiny SmolVLM. Graphs over 10 MB keep their weights in ``<file>.onnx_data``
    here (a stand-in for protobuf's 2 GB limit, which real SmolVLMs cross), so that Node loads that form too; the
    slow tests load single files."""
    import export.transformersjs as tjs
    from export.build import ExportConfig, export

    out = tmp_path_factory.mktemp("tjs_random") / "export-transformers.js"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tjs, "SINGLE_FILE_BYTES", 10_000_000)
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
    external = json.loads((out / "config.json").read_text())["transformers.js_config"]["use_external_data_format"]
    assert external and all((out / "onnx" / f"{name}_data").is_file() for name in external)
    assert "decoder_model_merged.onnx" in external  # the 13 MB fp32 decoder
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
    # transformers.js resolves only the symbol "batch_size" to the batch (modeling_utils.js, addPastKeyValues)
    past = [i for i in runner.decoder.get_inputs() if i.name.startswith("past_key_values.")]
    assert past and all(i.shape[0] == "batch_size" for i in past)
    cache = runner._empty_cache(2)
    assert all(v.shape[0] == 2 and v.shape[2] == 0 for v in cache.values())
    assert sorted(cache) == sorted(f"past_key_values.{i}.{kv}" for i in range(manifest["text"]["layers"])
                                   for kv in ("key", "value"))


def test_node_loads_the_export_offline_with_pythons_prompt_and_pytorchs_tokens(random_export, tiny_dirs, synth_root,
                                                                               tmp_path):
    """transformers.js in Node: its chat template and processor give Python's prompt ids, and with Python's pixel
    values its greedy tokens are PyTorch's (fp32) on real images."""
    from PIL import Image

    from export.build import torch_reference
    from export.compare import until_eos
    from factory.models import load_model
    from factory.prompts import question

    out, _ = random_export
    images = sorted((synth_root / "image").rglob("*.jpg"))[:2]
    loaded = load_model(str(tiny_dirs("smolvlm")), dtype="float32", device="cpu")
    prompt, ids, pixels = python_side(loaded.processor, images, "cot")
    result = run_node(out, images, pixels, ["fp32", "q4"], question("cot"), 8, tmp_path)
    assert result["prompt"] == prompt and result["prompt_ids"] == ids
    refs = torch_reference(loaded.model.eval(), loaded.processor, [Image.open(p).convert("RGB") for p in images],
                            8, "cot")
    eos = set(json.loads((out / "generation_config.json").read_text())["eos_token_id"])
    fp32 = result["dtypes"]["fp32"]
    assert fp32["class"] == "SmolVLMForConditionalGeneration"
    assert [until_eos(r["tokens"], eos) for r in fp32["python_pixels"]] == \
        [until_eos(r["tokens"], eos) for r in refs]
    # the quantized graphs: the library's tokens are those of the export's own validation runner
    from export.transformersjs import TransformersJsRunner

    runner = TransformersJsRunner(out, "int4", ids)
    assert [until_eos(r["tokens"], eos) for r in result["dtypes"]["q4"]["python_pixels"]] == \
        [runner.generate(pixel_values=pv, max_new_tokens=8).token_ids for pv in pixels]


def test_node_reads_the_small_tokenizer_and_the_projects_chat_template(small_tiny_dirs, synth_root, tmp_path):
    """`svlm run`'s default tokenizer (a small local BPE) with the project's chat template ({% generation %} tags
    for trl): the library renders and tokenizes the prompt as Python does, and generates PyTorch's tokens."""
    from export.build import ExportConfig, export
    from export.transformersjs import TransformersJsRunner
    from factory.models import load_model
    from factory.prompts import question

    out = tmp_path / "export-transformers.js"
    export(ExportConfig(model=str(small_tiny_dirs("smolvlm")), out=str(out), layout="transformers.js",
                        quant=["fp32"], validate_images=2, max_new_tokens=8))
    processor = load_model(str(small_tiny_dirs("smolvlm")), dtype="float32", device="cpu").processor
    images = sorted((synth_root / "image").rglob("*.jpg"))[:1]
    prompt, ids, pixels = python_side(processor, images, "cot")
    result = run_node(out, images, pixels, ["fp32"], question("cot"), 8, tmp_path / "node")
    assert "endgeneration" in processor.chat_template  # trl's tag, which the library's jinja must accept
    assert result["prompt"] == prompt and result["prompt_ids"] == ids
    assert result["dtypes"]["fp32"]["python_pixels"][0]["tokens"][:8] == \
        TransformersJsRunner(out, "fp32", ids).generate(pixel_values=pixels[0], max_new_tokens=8).token_ids[:8]


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


# --- slow: a tiny SmolVLM that answers with labels, all dtypes, 32 held-out images ------------------------------
@pytest.fixture(scope="module")
def trained_export(tiny_dirs, synth_root, tmp_path_factory):
    """A tiny real-tokenizer SmolVLM whose label-only baseline (conftest's ``train_label_adapter``, finished by
    ``svlm train``) answers ``<answer>label</answer>``, exported with ``--layout transformers.js`` (all dtypes)."""
    from conftest import label_baseline_run

    from export.build import ExportConfig, export

    run_dir = label_baseline_run(tiny_dirs("smolvlm"), synth_root, tmp_path_factory.mktemp("tjs_runs"), "smol")
    manifests = export(ExportConfig(run=str(run_dir), layout="transformers.js", max_new_tokens=12))
    return run_dir, run_dir / "export-transformers.js", manifests


@pytest.fixture(scope="module")
def held_out(tmp_path_factory):
    """32 synthetic images the model never saw (another seed), spread over the 8 emotions."""
    from factory.data.synth import SynthConfig, generate

    root = tmp_path_factory.mktemp("held_out") / "d"
    generate(SynthConfig(out=str(root), n=64, seed=11, image_size=48), progress=False)
    paths = sorted((root / "image").rglob("*.jpg"))
    return paths[::len(paths) // 32][:32]


@pytest.mark.slow
def test_transformers_js_matches_pytorch_on_32_images_at_every_dtype(trained_export, held_out, tmp_path):
    """In Node, per dtype (fp32, int8, q4): the library's prompt ids are Python's; with Python's pixel values its
    greedy tokens are PyTorch's (a divergence counts only at a PyTorch top-2 tie, export.compare's rule); with its
    own preprocessing (sharp) its labels agree with PyTorch's on ≥ 90 % of the images where PyTorch gave one. The
    pixel gap between the two preprocessings is measured and printed."""
    from PIL import Image

    from export.build import torch_reference, merge
    from export.compare import first_divergence, until_eos
    from factory.prompts import parse_answer, question
    from factory.train.common import stage_source

    run, out, manifests = trained_export
    base, adapter, style = stage_source(run / "0_baseline")
    model, processor, _, _ = merge(base, adapter, tmp_path / "merged")
    images = [Image.open(p).convert("RGB") for p in held_out]
    refs = torch_reference(model, processor, images, 12, style)
    prompt, ids, pixels = python_side(processor, held_out, style)
    result = run_node(out, held_out, pixels, list(DTYPE_OF.values()), question(style), 12, tmp_path / "node")
    assert result["prompt"] == prompt and result["prompt_ids"] == ids

    eos = set(json.loads((out / "generation_config.json").read_text())["eos_token_id"])
    want = [until_eos(r["tokens"], eos) for r in refs]
    torch_labels = [parse_answer(processor.tokenizer.decode(w, skip_special_tokens=True)).label for w in want]
    valid = [i for i, label in enumerate(torch_labels) if label is not None]
    assert len(valid) >= 24, f"PyTorch gave a valid label on only {len(valid)} of 32 images: agreement says little"
    print(f"\nPyTorch labels on the 32 held-out images: {sorted(collections.Counter(torch_labels).items(), key=str)}")
    assert len(set(torch_labels)) >= 3  # answers that depend on the image, so that agreeing means something

    own = np.stack([np.fromfile(f, np.float32) for f in result["own_pixels"]])
    python = np.stack([p.ravel() for p in pixels])
    assert own.shape == python.shape
    gap = np.abs(own - python) / (2 / 255)  # in grey levels: mean = std = 0.5, so one level is 2/255
    print(f"\npixel gap, library (sharp + bilinear on floats) vs Python processor, in grey levels: max "
          f"{gap.max():.1f}, mean {gap.mean():.2f}, 99th percentile {np.percentile(gap, 99):.1f}")
    for quant, dtype in DTYPE_OF.items():
        r = result["dtypes"][dtype]
        same = 0
        for ref, w, got in zip(refs, want, r["python_pixels"]):
            g = until_eos(got["tokens"], eos)
            first = first_divergence(g, w)
            same += g == w or (first < len(ref["top2_gaps"]) and ref["top2_gaps"][first] < 1e-4)
            assert got["text"] == processor.tokenizer.decode(g, skip_special_tokens=True)  # the library's decode
        labels = [parse_answer(x["text"]).label for x in r["own_preprocessing"]]
        own_same = sum(until_eos(x["tokens"], eos) == w for x, w in zip(r["own_preprocessing"], want))
        agree = sum(labels[i] == torch_labels[i] for i in valid) / len(valid)
        ms = np.median([x["ms"] for x in r["own_preprocessing"]])
        print(f"{quant} ({dtype}): greedy tokens = PyTorch's with Python pixels on {same}/32; labels with the "
              f"library's preprocessing agree on {agree:.0%} of {len(valid)} (whole answers equal on {own_same}/32); export validation "
              f"{manifests[quant]['validation']['greedy_tokens_identical']:.0%} tokens identical; load "
              f"{r['load_ms']:.0f} ms, median generate {ms:.0f} ms")
        assert same == 32, f"{quant}: transformers.js tokens differ from PyTorch's on {32 - same} of 32 images"
        assert agree >= 0.9, f"{quant}: labels agree on {agree:.0%} of {len(valid)} images (need ≥ 90 %)"


# --- slow: the static page in headless Chromium ----------------------------------------------------------------
@pytest.fixture(scope="module")
def web_page(trained_export):
    """demo/web/serve.py on a free port, serving the trained export, the library and onnxruntime-web's wasm."""
    import socket
    import sys
    import time
    import urllib.request

    require_transformers_js()
    _, out, _ = trained_export
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, str(REPO / "demo" / "web" / "serve.py"), str(out), "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(url + "models/model/manifest.json", timeout=1).read()
                break
            except OSError:
                time.sleep(0.1)
        yield url, out
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_serve_refuses_a_folder_that_is_not_a_transformers_js_export(tmp_path):
    import sys

    proc = subprocess.run([sys.executable, str(REPO / "demo" / "web" / "serve.py"), str(tmp_path)],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode != 0 and "is not an `svlm export --layout transformers.js` folder" in proc.stderr


@pytest.mark.slow
def test_browser_classifies_an_uploaded_image_client_side(web_page, held_out, tiny_processors, tmp_path):
    """Headless Chromium on demo/web: upload, Analyze at the default dtype (q4), read the answer. The label must be
    the one PyTorch gives for that image (the export's fp32 graphs, validated equal to PyTorch, stand in for it);
    two images with different labels, so a page that ignored the image could not pass; then int8 and fp32 on the
    second. A non-image is refused."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait
    from test_demo import require_chromedriver

    from export.transformersjs import TransformersJsRunner

    url, out = web_page
    manifest = json.loads((out / "manifest.json").read_text())
    runner = TransformersJsRunner(out, "fp32", manifest["prompt"]["input_ids"])
    expected = {}
    for path in held_out:
        _, _, (pv,) = python_side(tiny_processors("smolvlm"), [path], manifest["prompt"]["style"])
        label = runner.generate(pixel_values=pv, max_new_tokens=12).label
        if label is not None and label not in expected.values():
            expected[path] = label
        if len(expected) == 2:
            break
    assert len(expected) == 2

    opts = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1000"):
        opts.add_argument(arg)
    if shutil.which("chromium"):
        opts.binary_location = shutil.which("chromium")
    driver = webdriver.Chrome(service=Service(require_chromedriver()), options=opts)
    status = lambda d: d.find_element(By.ID, "status").text  # noqa: E731
    try:
        driver.get(url)
        wait = WebDriverWait(driver, 120)
        wait.until(lambda d: status(d).startswith(("ready", "error")))
        assert status(driver).startswith("ready"), status(driver)
        assert driver.find_element(By.ID, "dtype").get_attribute("value") == "q4"
        for i, (path, label) in enumerate(expected.items()):
            driver.find_element(By.ID, "image").send_keys(str(path))
            wait.until(lambda d: d.find_element(By.ID, "analyze").is_enabled())
            driver.find_element(By.ID, "analyze").click()
            wait.until(lambda d: status(d) == "done" or status(d).startswith("error"))
            answer = driver.find_element(By.ID, "emotion").get_attribute("data-label")
            text = driver.find_element(By.ID, "reasoning").get_attribute("value")
            shot = tmp_path / f"web_{i}.png"
            driver.save_screenshot(str(shot))
            print(f"browser: {path.name}: {answer!r} (PyTorch {label!r}), text {text!r}, "
                  f"{driver.find_element(By.ID, 'stats').text}; screenshot {shot}")
            assert status(driver) == "done" and answer == label
            assert shot.stat().st_size > 10_000
        for dtype in ("int8", "fp32"):  # the other dtypes load and answer the same in the page's wasm runtime
            Select(driver.find_element(By.ID, "dtype")).select_by_value(dtype)
            driver.find_element(By.ID, "analyze").click()
            wait.until(lambda d: status(d) == "done" or status(d).startswith("error"))
            print(f"browser, {dtype}: {driver.find_element(By.ID, 'emotion').get_attribute('data-label')!r}; "
                  f"{driver.find_element(By.ID, 'stats').text}")
            assert status(driver) == "done"
            assert driver.find_element(By.ID, "emotion").get_attribute("data-label") == label
        bad = tmp_path / "notes.jpg"
        bad.write_text("this is not an image")
        driver.find_element(By.ID, "image").send_keys(str(bad))
        wait.until(lambda d: "not a readable image" in status(d))
        assert not driver.find_element(By.ID, "analyze").is_enabled()
    finally:
        driver.quit()
