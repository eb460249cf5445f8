"""``svlm export --layout gguf`` and the GGUF runner: llama.cpp's converter and multimodal runtime against
PyTorch on tiny real-tokenizer models (never skipped: ``.ci/run`` installs llama-cpp-python and the
converter comes from its sdist, fetched once into the cache).

llama.cpp's converter maps projector tensors by layer index up to the vision tower's layer count, so the
tiny models here have 4 vision layers (``deep_tiny``); their text side is the usual tiny one with the real
151k-token vocabulary.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image


def _deepen(src, dst, layers: int = 4):
    """The saved tiny model ``src`` with ``layers`` vision layers (random weights, seed 0), saved to ``dst``."""
    import torch
    from transformers import AutoConfig

    from factory.families import family_of

    config = AutoConfig.from_pretrained(src)
    for key in ("depth", "num_hidden_layers"):
        if hasattr(config.vision_config, key):
            setattr(config.vision_config, key, layers)
    torch.manual_seed(0)
    family_of(config).model_cls()(config).eval().save_pretrained(dst)
    for f in src.iterdir():
        if not f.name.endswith(".safetensors") and f.name != "config.json":
            shutil.copy(f, dst / f.name)
    return dst


@pytest.fixture(scope="module")
def deep_tiny(tiny_dirs, tmp_path_factory):
    cache = {}

    def get(family: str):
        if family not in cache:
            cache[family] = _deepen(tiny_dirs(family), tmp_path_factory.mktemp(f"deep_{family}"))
        return cache[family]

    return get


@pytest.fixture(scope="module")
def qwen_gguf(deep_tiny, tmp_path_factory):
    """f16 and Q4_K_M packages of the tiny Qwen2-VL, validated inside the export."""
    from export.build import ExportConfig, export

    out = tmp_path_factory.mktemp("gguf") / "export-gguf"
    manifests = export(ExportConfig(model=str(deep_tiny("qwen2vl")), layout="gguf", quant=["f16", "q4_k_m"],
                                    out=str(out), validate_images=3, max_new_tokens=12))
    return out, manifests


def _images():
    rng = np.random.default_rng(5)
    # a small one and one far above the policy's 448x448 pixels (llama.cpp alone would give it ~1000 tokens)
    return [Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for h, w in ((90, 120), (900, 1300))]


def test_export_validates_f16_against_pytorch_and_writes_runnable_packages(qwen_gguf):
    out, manifests = qwen_gguf
    assert set(manifests) == {"f16", "q4_k_m"}
    assert (out / ".svlm-export").is_file() and not (out.parent / "export-gguf.tmp").exists()
    f16 = manifests["f16"]["validation"]
    assert f16["images"] == 3 and f16["prompt_ids_identical"] == 1 and f16["greedy_tokens_identical"] == 1
    assert 0 < f16["max_abs_logit_diff"] < 0.05  # f16 weights: close, not bit-identical
    q4 = manifests["q4_k_m"]["validation"]
    assert q4["max_abs_logit_diff"] > f16["max_abs_logit_diff"]  # recorded, and really quantized
    for quant, m in manifests.items():
        pkg = out / quant
        assert {"model.gguf", "mmproj.gguf", "Modelfile", "README.md", "manifest.json"} <= {f.name for f in pkg.iterdir()}
        assert m["size_bytes"] == sum(f.stat().st_size for f in pkg.iterdir() if f.name != "manifest.json")
        assert m["image"]["max_tokens"] == 256 and m["image"]["min_tokens"] == 4  # the policy's 448² / 28²
        card = (pkg / "README.md").read_text()
        assert card.startswith("---\n") and "--image-max-tokens 256" in card and "llama-mtmd-cli" in card
        assert "Ollama" in card and "LM Studio" in card
        modelfile = (pkg / "Modelfile").read_text()
        assert "FROM ./model.gguf" in modelfile and "FROM ./mmproj.gguf" in modelfile
        assert 'PARAMETER stop "<|im_end|>"' in modelfile
    assert (out / "q4_k_m" / "model.gguf").stat().st_size < 0.7 * (out / "f16" / "model.gguf").stat().st_size


def test_export_fails_and_writes_nothing_when_llama_cpp_leaves_the_image_policy(deep_tiny, tmp_path, monkeypatch):
    """llama.cpp told a smaller image-token budget than the processor's policy: its prompt has fewer image
    tokens than the processor's, and the export refuses every package."""
    import dataclasses

    from export.build import ExportConfig, ExportError, export
    from factory.families import FAMILIES

    fam = FAMILIES["qwen2vl"]
    monkeypatch.setitem(FAMILIES, "qwen2vl", dataclasses.replace(
        fam, gguf=dataclasses.replace(fam.gguf, image_tokens=lambda ip: (4, 8))))
    out = tmp_path / "export-gguf"
    with pytest.raises(ExportError, match="the image policy is not matched"):
        export(ExportConfig(model=str(deep_tiny("qwen2vl")), layout="gguf", quant=["f16"], out=str(out),
                            validate_images=2, max_new_tokens=4))
    assert not out.exists() and not (tmp_path / "export-gguf.tmp").exists()


@pytest.mark.slow
def test_export_fails_when_f16_tokens_really_diverge(deep_tiny, tmp_path, monkeypatch):
    """A runtime that picks a token PyTorch ranks far down (here: the least likely one) is not excused as a
    rounding tie: the f16 check fails and nothing is written."""
    from export.build import ExportConfig, ExportError, export
    from svlm_runtime.package import Package

    monkeypatch.setattr(Package, "_pick", staticmethod(lambda logits, temperature, top_p, rng: int(logits.argmin())))
    out = tmp_path / "export-gguf"
    with pytest.raises(ExportError, match="f16 GGUF does not match PyTorch"):
        export(ExportConfig(model=str(deep_tiny("qwen2vl")), layout="gguf", quant=["f16"], out=str(out),
                            validate_images=2, max_new_tokens=4))
    assert not out.exists()


def test_chat_template_and_tokenizer_are_embedded(qwen_gguf, deep_tiny):
    """Ollama and LM Studio read the chat template from the GGUF file itself."""
    import llama_cpp

    from svlm_runtime.gguf import GGUFModel

    out, _ = qwen_gguf
    model = GGUFModel(out / "f16")
    template = llama_cpp.llama_model_chat_template(model._model, None).decode()
    assert template == (deep_tiny("qwen2vl") / "chat_template.jinja").read_text()
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(deep_tiny("qwen2vl"))
    text = "Which emotion? <think>awe</think><answer>awe</answer>"
    assert model.encode(text) == tok.encode(text, add_special_tokens=False)
    model.close()


def test_runner_matches_pytorch_prompt_and_tokens_on_small_and_large_images(qwen_gguf, deep_tiny):
    """The image policy matched: llama.cpp's prompt around each image is the processor's, image tokens
    included, for an image under and one far over the policy's pixel budget; greedy tokens equal PyTorch's."""
    import torch
    from transformers import AutoModelForImageTextToText

    from export.build import prompt_ids
    from factory.models import load_model
    from factory.prompts import render_prompt
    from svlm_runtime.gguf import GGUFModel, resize_for

    out, _ = qwen_gguf
    loaded = load_model(str(deep_tiny("qwen2vl")), dtype="float32", device="cpu")
    processor, fam = loaded.processor, loaded.family
    model = GGUFModel(out / "f16", threads=1)
    image_id = fam.image_token_id(processor.tokenizer)
    prompt = render_prompt(processor, "cot")
    for img in _images():
        parts, chunks = model.prompt_chunks(resize_for(img, model.manifest["image"]["resize"]))
        model._mtmd.mtmd_input_chunks_free(chunks)
        got = [t for kind, v in parts for t in (v if kind == "text" else [image_id] * v)]
        want = prompt_ids(processor, img)
        assert got == want
        assert 4 <= want.count(image_id) <= 256
        inputs = processor(images=[[img]], text=[prompt], return_tensors="pt")
        with torch.no_grad():
            ref = loaded.model.generate(**inputs, max_new_tokens=8, do_sample=False)[0, len(want):].tolist()
        assert model.generate(img, max_new_tokens=8, label_probs=False).token_ids == ref[:8]
    del AutoModelForImageTextToText
    model.close()


def test_runner_interface_label_probs_batch_and_open_model(qwen_gguf, synth_root):
    """``open_model`` gives the GGUF runner for a GGUF package; it streams, scores every label (the
    probabilities equal a softmax over each label's log-probability summed after the answer tag) and
    ``generate_batch`` equals ``generate``."""
    from factory.inference import open_model
    from svlm_runtime.gguf import GGUFModel

    out, manifests = qwen_gguf
    model = open_model(out / "q4_k_m", threads=1)
    assert isinstance(model, GGUFModel) and model.kind == "gguf" and model.name.endswith("gguf-q4_k_m")
    assert model.size_bytes == manifests["q4_k_m"]["size_bytes"] and model.style == "cot"
    images = sorted((synth_root / "image").rglob("*.jpg"))[:3]
    pieces = []
    one = model.generate(images[0], max_new_tokens=10, on_text=pieces.append)
    assert "".join(pieces) == one.text and one.tokens >= 1 and one.ttft_s > 0 and one.vision_s > 0
    assert set(one.label_probs) == set(model.labels) and abs(sum(one.label_probs.values()) - 1) < 1e-6
    assert one.label_probs_forced  # a random model writes no answer: scored after "</think><answer>"
    assert len(set(round(p, 6) for p in one.label_probs.values())) > 1  # scored, not uniform
    batch = model.generate_batch(images, max_new_tokens=10, batch_size=2, label_probs=False)
    assert [g.token_ids for g in batch] == [model.generate(i, max_new_tokens=10, label_probs=False).token_ids
                                           for i in images]
    model.close()


def test_label_probs_equal_a_direct_scoring(qwen_gguf, synth_root):
    """Each label's probability from the runner's cut-back cache equals scoring it from a fresh prefill with
    the whole context fed again (so the cache cut and positions are right)."""
    from svlm_runtime.gguf import GGUFModel, _rgb, resize_for
    from svlm_runtime.label_scoring import label_probabilities, plan_label_scoring

    out, _ = qwen_gguf
    model = GGUFModel(out / "f16", threads=1)
    image = sorted((synth_root / "image").rglob("*.jpg"))[1]
    gen = model.generate(image, max_new_tokens=6)
    plan = plan_label_scoring(gen.token_ids, model.encode, model.decode, model.labels, model.style,
                              model.answer_format)
    sums = {}
    for label, target in plan.labels.items():
        _, pos, _ = model._prefill(resize_for(_rgb(image), model.manifest["image"]["resize"]))
        context = [*gen.token_ids[:plan.kept], *plan.bridge]
        logits = model._feed([*context, *target], pos, logits="all")[len(context) - 1:len(context) - 1 + len(target)]
        z = logits.astype(np.float64)
        logp = z - z.max(-1, keepdims=True)
        logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
        sums[label] = float(logp[np.arange(len(target)), target].sum())
    want = label_probabilities(sums)
    assert all(abs(gen.label_probs[k] - want[k]) < 1e-4 for k in want)
    model.close()


def test_bench_latency_accepts_a_gguf_package(qwen_gguf, synth_root, tmp_path):
    out, _ = qwen_gguf
    images = [str(p) for p in sorted((synth_root / "image").rglob("*.jpg"))[:2]]
    row = tmp_path / "row.json"
    subprocess.run([sys.executable, "-m", "benchmarks.latency", "--one", str(out / "q4_k_m"), "--images", *images,
                    "--runs", "2", "--warmup", "1", "--threads", "1", "--max-new-tokens", "6", "--json", str(row)],
                   check=True, capture_output=True)
    r = json.loads(row.read_text())
    assert r["kind"] == "gguf" and r["ttft_s"]["p50"] > 0 and r["decode_tokens_per_s"]["p50"] > 0


def test_bench_accuracy_and_the_demo_accept_a_gguf_package(qwen_gguf, synth_root, tmp_path):
    """``svlm bench accuracy`` scores a GGUF package; the demo lists a run's GGUF packages and streams one."""
    from benchmarks.accuracy import run
    from demo.app import find_models, stream

    out, _ = qwen_gguf
    report = run([str(out / "q4_k_m")], str(synth_root), split="val", limit=3, out=tmp_path / "bench",
                 max_new_tokens=6, progress=False, plots=False)
    row = report["models"][0]
    assert row["kind"] == "gguf" and row["n"] == 3 and len(row["predictions"]) == 3
    runs = tmp_path / "runs"
    shutil.copytree(out, runs / "r" / "export-gguf")
    found = find_models(runs)
    assert found["r · GGUF q4_k_m (llama.cpp)"] == str(runs / "r" / "export-gguf" / "q4_k_m")
    from factory.inference import open_model

    model = open_model(found["r · GGUF f16 (llama.cpp)"], threads=1)
    image = str(sorted((synth_root / "image").rglob("*.jpg"))[0])
    events = list(stream(model, image, max_new_tokens=6))
    kind, result = events[-1]
    assert kind == "done" and set(result["probs"]) == set(model.labels)
    assert all(k == "text" for k, _ in events[:-1]) and events[-2][1] == model.decode(model.generate(image, max_new_tokens=6, label_probs=False).token_ids)
    model.close()


def test_damaged_or_foreign_packages_are_refused(qwen_gguf, tmp_path):
    from svlm_runtime import Package, PackageError
    from svlm_runtime.gguf import GGUFModel

    out, _ = qwen_gguf
    with pytest.raises(PackageError, match="is a GGUF package"):
        Package(out / "f16")
    bad = tmp_path / "pkg"
    shutil.copytree(out / "f16", bad)
    with open(bad / "mmproj.gguf", "r+b") as f:  # same size, one byte changed
        f.seek(1000)
        byte = f.read(1)
        f.seek(1000)
        f.write(bytes([byte[0] ^ 1]))
    with pytest.raises(PackageError, match="mmproj.gguf does not match its sha256"):
        GGUFModel(bad)
    (bad / "model.gguf").write_bytes(b"GGUF")
    with pytest.raises(PackageError, match="model.gguf has 4 bytes"):
        GGUFModel(bad, verify=False)


def test_smolvlm_is_refused_with_the_registry_reason(tiny_dirs, tmp_path):
    from export.build import ExportConfig, ExportError, export
    from factory.families import get_family

    with pytest.raises(ExportError, match="SmolVLM has no GGUF export") as err:
        export(ExportConfig(model=str(tiny_dirs("smolvlm")), layout="gguf", out=str(tmp_path / "x")))
    assert str(err.value) == get_family("smolvlm").gguf.unsupported
    assert not (tmp_path / "x").exists() and not (tmp_path / "x.tmp").exists()


def test_converter_source_errors_are_one_clear_line(monkeypatch, tmp_path):
    from export.build import ExportError
    from export.gguf import CONVERTER_ENV, converter

    monkeypatch.setenv(CONVERTER_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(ExportError, match="neither a folder with convert_hf_to_gguf.py nor"):
        converter()


def test_converter_is_extracted_once_from_an_sdist(monkeypatch, tmp_path):
    """Given the llama-cpp-python sdist (as pip downloads it), the converter's files are extracted into the cache,
    and only them; a second call reuses the cache."""
    import io
    import tarfile

    from export.gguf import CONVERTER_ENV, bindings_version, converter

    sdist = tmp_path / "llama_cpp_python-x.tar.gz"
    with tarfile.open(sdist, "w:gz") as tar:
        for name in ("convert_hf_to_gguf.py", "conversion/__init__.py", "gguf-py/gguf/__init__.py", "LICENSE",
                     "src/llama.cpp", "convert_lora_to_gguf.py"):
            data = f"# {name}\n".encode()
            info = tarfile.TarInfo(f"llama_cpp_python-x/vendor/llama.cpp/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv(CONVERTER_ENV, str(sdist))
    got = converter()
    assert got == tmp_path / "cache" / "svlm" / f"llama-cpp-python-{bindings_version()}-converter"
    assert sorted(str(f.relative_to(got)) for f in got.rglob("*") if f.is_file()) == [
        "LICENSE", "conversion/__init__.py", "convert_hf_to_gguf.py", "gguf-py/gguf/__init__.py"]
    sdist.unlink()
    assert converter() == got  # cached: the sdist is not read again


def test_split_prompt_needs_exactly_one_placeholder():
    from export.build import ExportError
    from export.gguf import split_prompt

    assert split_prompt("a<I>b", "<I>") == ("a", "b")
    with pytest.raises(ExportError, match="2 image placeholders"):
        split_prompt("<I><I>", "<I>")


@pytest.mark.slow
def test_internvl_exports_through_the_staged_copy(deep_tiny, tmp_path):
    """InternVL (transformers' layout) converts only through the staged copy; its f16 package gives PyTorch's
    greedy tokens, and the tokenizer's id past the embedding rows (``</box>``) is left out."""
    from export.build import ExportConfig, export

    out = tmp_path / "export-gguf"
    manifests = export(ExportConfig(model=str(deep_tiny("internvl")), layout="gguf", quant=["f16", "q8_0"],
                                    out=str(out), validate_images=3, max_new_tokens=12))
    v = manifests["f16"]["validation"]
    assert v["prompt_ids_identical"] == 1 and v["greedy_tokens_identical"] == 1 and v["max_abs_logit_diff"] < 0.05
    assert manifests["f16"]["image"]["resize"] == {"kind": "fixed", "height": 448, "width": 448, "resample": 3}
    assert manifests["q8_0"]["validation"]["prompt_ids_identical"] == 1


@pytest.mark.slow
def test_internvl_without_the_tensor_renames_writes_an_empty_mmproj_and_fails(deep_tiny, tmp_path):
    """What the staging guards against: without the prefixes the converter writes a 0-tensor mmproj silently."""
    import dataclasses

    from export.build import ExportError
    from export.gguf import convert, converter, stage
    from factory.families import get_family

    fam = get_family("internvl")
    bare = dataclasses.replace(fam, gguf=dataclasses.replace(fam.gguf, tensor_prefixes=()))
    staged = stage(deep_tiny("internvl"), bare, tmp_path / "staged")
    with pytest.raises(ExportError, match="with no tensors"):
        convert(converter(), staged, tmp_path / "mmproj.gguf", mmproj=True)


@pytest.mark.parametrize("wheel_present", [True, False])
def test_ci_installs_llama_cpp_from_the_shared_wheel_or_builds_it(tmp_path, wheel_present):
    """``.ci/run`` installs llama-cpp-python from ``../shared/wheels`` when the wheel lies there, else builds it
    from PyPI (CPU only), then the gguf extra, before any test runs (python3 is stubbed: nothing is installed)."""
    from pathlib import Path

    ci = Path(__file__).resolve().parent.parent / ".ci" / "run"
    repo = tmp_path / "repo"
    (repo / ".ci").mkdir(parents=True)
    shutil.copy(ci, repo / ".ci" / "run")
    wheel = tmp_path / "shared" / "wheels" / "llama_cpp_python-0.3.36-py3-none-linux_x86_64.whl"
    if wheel_present:
        wheel.parent.mkdir(parents=True)
        wheel.write_bytes(b"")
    from ci_stub import run_ci

    # the other install steps find their tools already there (chromedriver, node, npm): stubs that succeed
    proc, log = run_ci(repo / ".ci" / "run", tmp_path, {
        "chromedriver": "exit 0", "node": "exit 0", "npm": "exit 0",
        "python3": 'echo "RAN $* CMAKE_ARGS=${CMAKE_ARGS:-}" >> "$LOG"; exit 0'}, home=str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    lines = log.splitlines()
    install = next(i for i, line in enumerate(lines) if "llama" in line)
    if wheel_present:
        assert "pip install -q ../shared/wheels/llama_cpp_python-0.3.36" in lines[install]
    else:
        assert "pip install -q llama-cpp-python==0.3.36" in lines[install]
        assert "-DGGML_NATIVE=OFF" in lines[install] and "-DGGML_CUDA=OFF" in lines[install]
    assert 'pip install -q -e .[gguf]' in lines[install + 1]
    assert install + 1 < next(i for i, line in enumerate(lines) if "-m pytest" in line)
