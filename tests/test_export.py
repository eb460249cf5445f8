"""Export on tiny models: merge, three ONNX graphs, int8/int4, validation against PyTorch, packages, and the
torch-free runtime."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest


from export.build import ExportConfig, ExportError, export
from export.compare import agreement_text
from svlm_runtime.package import Package, PackageError


def test_merged_logits_equal_base_plus_adapter(baseline_run, tmp_path):
    import torch
    from peft import PeftModel

    from export.build import probe_inputs, merge
    from factory.models import load_model
    from factory.train.common import stage_source

    base_path, adapter, _ = stage_source(baseline_run / "0_baseline")
    base = load_model(base_path, dtype="float32", device="cpu")
    adapted = PeftModel.from_pretrained(base.model, str(adapter)).eval()
    merged, processor, _, gap = merge(base_path, adapter, tmp_path / "m")
    probe = probe_inputs(processor)
    with torch.no_grad():
        want, got = adapted(**probe).logits, merged(**probe).logits
        plain = load_model(base_path, dtype="float32", device="cpu").model(**probe).logits
    assert torch.allclose(want, got, atol=1e-5) and gap < 1e-4
    assert not torch.allclose(plain, got, atol=1e-3)  # the adapter changed the model: the check has teeth
    reloaded = load_model(tmp_path / "m", dtype="float32", device="cpu").model
    assert "lora" not in "".join(n for n, _ in reloaded.named_parameters())


def _card(text: str) -> tuple[dict, str]:
    """A model card's YAML front matter and its body."""
    import yaml

    assert text.startswith("---\n"), text[:80]
    head, _, body = text[4:].partition("---\n")
    return yaml.safe_load(head), body.lstrip()


def test_packages_validate_and_describe_themselves(exported):
    import onnx

    out, manifests = exported
    assert set(manifests) == {"fp32", "int8", "int4"}
    fp32 = manifests["fp32"]["validation"]
    assert fp32["max_abs_logit_diff"] <= 1e-4 and fp32["greedy_tokens_identical"] == 1.0
    for quant, m in manifests.items():
        pkg = out / quant
        for key in ("family", "image", "tokens", "chat_template", "labels", "quantization", "files", "validation",
                    "source", "prompt"):
            assert key in m, f"{quant}: manifest lacks {key}"
        assert json.loads((pkg / "manifest.json").read_text()) == m
        meta, card = _card((pkg / "README.md").read_text())
        assert card.startswith("# SVLM Factory export")
        # hub metadata: what the hub lists and links the package by
        assert (meta["library_name"], meta["pipeline_tag"]) == ("onnx", "image-text-to-text")
        assert meta["labels"] == m["labels"] and quant in meta["tags"] and "base_model" not in meta  # a local base
        # the card's two commands a device needs: install the runtime, run it on this package
        assert "pip install ./runtime" in card and f"svlm-infer {quant} image.jpg" in card
        assert m["answer"] == {"think": ["<think>", "</think>"], "answer": ["<answer>", "</answer>"],
                               "rule": "last-answer-block"}
        v = m["validation"]
        assert v["labels_valid_torch"] == sum(t is not None for t, _ in v["labels_torch_onnx"])
        assert f"| label agreement with PyTorch | {agreement_text(v)} |" in card
        assert m["source"]["stage"] == "0_baseline" and m["prompt"]["question"].endswith("inside <answer></answer>.")
        # the real tokenizer's ids: InternVL's <IMG_CONTEXT> and <|im_end|>
        assert m["tokens"]["image_token_id"] == 151667 and 151645 in m["tokens"]["eos_token_ids"]
        assert m["prompt"]["input_ids"].count(151667) == 4  # 448² in a 4 x 4 patch grid, pixel-shuffled
    ops = {q: {n.op_type for n in onnx.load(str(out / q / "decoder.onnx"), load_external_data=False).graph.node}
           for q in manifests}
    assert "MatMulNBits" in ops["int4"] and "MatMulNBits" not in ops["int8"]
    assert "MatMulInteger" in ops["int8"] or "DynamicQuantizeMatMul" in ops["int8"]
    sizes = {q: m["size_bytes"] for q, m in manifests.items()}
    assert sizes["int4"] < sizes["int8"] < sizes["fp32"]
    assert (out / "merged" / "model.safetensors").is_file()
    meta, card = _card((out / "merged" / "README.md").read_text())
    assert meta["library_name"] == "transformers" and "0_baseline" in card
    assert not (out.parent / "export.tmp").exists()


@pytest.mark.parametrize("quant", ["fp32", "int4"])
def test_the_exported_decoder_computes_logits_only_at_the_kept_positions(exported, quant):
    pkg = Package(exported[0] / quant)
    assert pkg.keeps_logits
    feats = pkg.vision.run(None, {"pixel_values": np.zeros((1, 3, 448, 448), np.float32)})[0]
    (last, _), (every, _) = pkg.prefill(feats), pkg.prefill(feats, all_logits=True)
    assert last.shape == (1, 1, pkg.dims["vocab"]) and every.shape == (1, len(pkg.prompt_ids), pkg.dims["vocab"])
    assert np.allclose(last[0, 0], every[0, -1], atol=1e-4)
    assert not np.allclose(every[0, 0], every[0, -1], atol=1e-3)  # not one row broadcast


@pytest.mark.parametrize("n", [3, 32])
def test_validation_takes_n_images_of_the_runs_validation_split_or_all_of_them(baseline_run, synth_root, n):
    from export.build import _run_data, validation_images
    from factory.data.emoset import read_split

    assert _run_data(baseline_run, None) == synth_root  # an `svlm train` run: the data its stages name
    val = read_split(synth_root, "val", check_images="none").records
    images = validation_images(ExportConfig(run=str(baseline_run)), n)
    assert len(images) == min(n, len(val)) and len({im.tobytes() for im in images}) == len(images)
    assert ExportConfig(model="m").validate_images == 32
    assert len(validation_images(ExportConfig(model="m"), 20)) == 20  # no run: synthetic images


def test_int8_labels_agree_with_pytorch(exported):
    """Agreement means something only if the labels depend on the image: PyTorch gives at least two distinct
    labels on the validation images, so a package that ignored its image could not agree on all of them."""
    out, manifests = exported
    v = manifests["int8"]["validation"]
    labels = v["labels_torch_onnx"]
    assert all(torch_label is not None for torch_label, _ in labels)  # the model does answer with labels
    torch_labels = [torch_label for torch_label, _ in labels]
    assert len(set(torch_labels)) >= 2, labels
    constant = max(map(torch_labels.count, torch_labels)) / len(torch_labels)  # the best image-blind answer
    print(f"int8 label agreement {v['label_agreement']:.0%} on {v['images']} images; int4 "
          f"{manifests['int4']['validation']['label_agreement']:.0%}; labels {labels}")
    assert v["label_agreement"] >= 5 / 6 and v["label_agreement"] > constant
    v4 = manifests["int4"]["validation"]
    assert [t for t, _ in v4["labels_torch_onnx"]] == torch_labels  # the same reference labels
    assert v4["label_agreement"] >= 4 / 6 and v4["label_agreement"] > constant


def test_cli_export_success_prints_each_package(baseline_run, synth_root, tmp_path, capsys):
    """`svlm export` from the command line: the stage's fp32 package is written, validated and reported."""
    from factory.cli import main

    out = tmp_path / "pkg"
    assert main(["export", "--run", str(baseline_run), "--stage", "0_baseline", "--out", str(out),
                 "--quant", "fp32", "validate_images=2", "max_new_tokens=8"]) == 0
    printed = capsys.readouterr().out
    (line,) = [line for line in printed.splitlines() if line.startswith("fp32: ")]
    assert "greedy tokens identical 100%" in line
    manifest = json.loads((out / "fp32" / "manifest.json").read_text())
    assert manifest["source"]["stage"] == "0_baseline" and manifest["validation"]["images"] == 2
    assert sorted(p.name for p in out.iterdir()) == [".svlm-export", "fp32", "merged"]  # the mark: replaceable
    image = next((synth_root / "image").rglob("*.jpg"))
    assert Package(out / "fp32").generate(image, max_new_tokens=4).label_probs


def test_runtime_streams_greedy_and_sampled_answers(exported, synth_root):
    out, manifests = exported
    pkg = Package(out / "int8")
    image = next((synth_root / "image").rglob("*.jpg"))
    chunks = []
    greedy = pkg.generate(image, max_new_tokens=12, on_text=chunks.append)
    assert "".join(chunks) == greedy.text and greedy.label in pkg.labels
    assert greedy.ttft_s > 0 and greedy.stopped in ("eos", "length")
    assert set(greedy.label_probs) == set(pkg.labels) and abs(sum(greedy.label_probs.values()) - 1) < 1e-6
    assert max(greedy.label_probs, key=greedy.label_probs.get) == greedy.label and not greedy.label_probs_forced
    a = pkg.generate(image, max_new_tokens=12, temperature=1.5, seed=1)
    b = pkg.generate(image, max_new_tokens=12, temperature=1.5, seed=1)
    assert a.token_ids == b.token_ids


def test_runtime_imports_neither_torch_nor_transformers(exported, synth_root):
    """On a real exported package (the toy package's version: tests/test_runtime_cli.py)."""
    out, _ = exported
    image = next((synth_root / "image").rglob("*.jpg"))
    code = (f"import sys; from svlm_runtime import Package; r = Package({str(out / 'int4')!r}).generate("
            f"{str(image)!r}, max_new_tokens=6); print(r.text); "
            "bad = [m for m in ('torch', 'transformers', 'trl', 'peft', 'factory', 'export') if m in sys.modules]; "
            "assert not bad, bad")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_numpy_preprocessing_matches_the_hf_processor(exported, synth_root, tiny_dirs):
    from PIL import Image
    from transformers import AutoProcessor
    from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil

    from svlm_runtime.preprocess import preprocess

    out, manifests = exported
    spec = manifests["fp32"]["image"]
    assert (spec["height"], spec["width"], spec["resample"]) == (448, 448, 3)  # the real InternVL settings
    hf = AutoProcessor.from_pretrained(tiny_dirs("internvl")).image_processor
    pil = GotOcr2ImageProcessorPil(size=dict(height=spec["height"], width=spec["width"]), image_mean=spec["mean"],
                                   image_std=spec["std"], resample=spec["resample"], crop_to_patches=False)
    rng = np.random.default_rng(0)
    images = [Image.open(p) for p in sorted((synth_root / "image").rglob("*.jpg"))[:3]]
    images += [Image.fromarray(rng.integers(0, 255, (30, 70, 3), dtype=np.uint8)),  # not square
               Image.fromarray(rng.integers(0, 255, (50, 40), dtype=np.uint8))]  # grayscale
    worst_tv, mean_tv = 0.0, 0.0
    levels = np.asarray(spec["std"], dtype=np.float32)[:, None, None] * 255  # normalized -> 8-bit grey levels
    for img in images:
        ours = preprocess(img, spec)
        ref = pil(images=[img.convert("RGB")], return_tensors="np")["pixel_values"]
        assert ours.shape == ref.shape and np.abs(ours - ref).max() < 1e-5
        tv = hf(images=[img.convert("RGB")], return_tensors="np")["pixel_values"]
        gap = np.abs(ours - tv)[0] * levels
        worst_tv, mean_tv = max(worst_tv, float(gap.max())), max(mean_tv, float(gap.mean()))
    # The default (torchvision) processor's bicubic kernel differs from PIL's; both round to 8 bits: at most
    # two grey levels on any pixel, under 0.05 on average (README; test_preprocess.py measures more shapes).
    assert worst_tv <= 2 + 1e-3 and mean_tv < 0.05


def test_bad_images_are_refused(exported, tmp_path):
    out, _ = exported
    pkg = Package(out / "fp32")
    (tmp_path / "x.jpg").write_text("not an image")
    with pytest.raises(ValueError, match="not a readable image"):
        pkg.generate(tmp_path / "x.jpg")


@pytest.mark.parametrize("damage,message", [
    (lambda p: (p / "decoder.onnx").unlink(), "decoder.onnx is missing"),
    (lambda p: (p / "manifest.json").unlink(), "manifest.json is missing"),
    (lambda p: (p / "manifest.json").write_text("{"), "corrupted"),
    (lambda p: (p / "vision.onnx").write_bytes((p / "vision.onnx").read_bytes()[:100]), "bytes"),
])
def test_damaged_packages_give_clear_errors(exported, tmp_path, damage, message):
    out, _ = exported
    pkg = tmp_path / "pkg"
    shutil.copytree(out / "int8", pkg)
    damage(pkg)
    with pytest.raises(PackageError, match=message):
        Package(pkg)


def test_failed_validation_writes_nothing(baseline_run, tmp_path, monkeypatch):
    import export.build as build

    real = build.compare

    def off(package, refs, max_new_tokens, tie=1e-4):
        return {**real(package, refs, max_new_tokens, tie), "max_abs_logit_diff": 1.0}

    monkeypatch.setattr(build, "compare", off)
    out = tmp_path / "exp"
    with pytest.raises(ExportError, match="does not match PyTorch"):
        export(ExportConfig(run=str(baseline_run), out=str(out), quant=["fp32"], validate_images=1))
    assert not out.exists() and not (tmp_path / "exp.tmp").exists()


def test_existing_output_is_kept_without_overwrite(exported):
    out, _ = exported
    with pytest.raises(ExportError, match="--overwrite"):
        export(ExportConfig(run=str(out.parent), out=str(out)))


def test_smolvlm_exports_validates_and_runs(tiny_dirs, tmp_path, synth_root):
    """SmolVLM with its real tokenizer and processor settings: the package validates, its numpy preprocessing
    equals the HF PIL processor (longest edge to 2048, then the 512² square), and the runtime answers."""
    from PIL import Image
    from transformers.models.smolvlm.image_processing_pil_smolvlm import SmolVLMImageProcessorPil

    from svlm_runtime.preprocess import preprocess

    manifests = export(ExportConfig(model=str(tiny_dirs("smolvlm")), out=str(tmp_path / "s"), quant=["fp32"],
                                    validate_images=2, max_new_tokens=8))
    m = manifests["fp32"]
    v = m["validation"]
    assert v["max_abs_logit_diff"] <= 1e-4 and v["greedy_tokens_identical"] == 1.0
    assert m["tokens"]["image_token_id"] == 49190 and 49279 in m["tokens"]["eos_token_ids"]
    spec = m["image"]
    assert (spec["kind"], spec["longest_edge"], spec["side"]) == ("longest_edge_square", 2048, 512)
    pil = SmolVLMImageProcessorPil(size={"longest_edge": spec["longest_edge"]},
                                   max_image_size={"longest_edge": spec["side"]}, image_mean=spec["mean"],
                                   image_std=spec["std"], resample=spec["resample"], do_image_splitting=False)
    rng = np.random.default_rng(0)
    images = [Image.open(next((synth_root / "image").rglob("*.jpg"))),
              Image.fromarray(rng.integers(0, 255, (30, 71, 3), dtype=np.uint8)),
              Image.fromarray(rng.integers(0, 255, (90, 41), dtype=np.uint8))]
    for img in images:
        ours = preprocess(img, spec)
        ref = pil(images=[[img.convert("RGB")]], return_tensors="np")["pixel_values"]
        assert np.abs(ours - ref.reshape(ours.shape)).max() < 1e-5
    gen = Package(tmp_path / "s" / "fp32").generate(images[1], max_new_tokens=6)
    assert len(gen.token_ids) <= 6 and abs(sum(gen.label_probs.values()) - 1) < 1e-6


def test_cli_export_errors_exit_2(tmp_path, capsys):
    from factory.cli import main

    assert main(["export", "--run", str(tmp_path / "none")]) == 2
    assert "no run folder" in capsys.readouterr().err
    assert main(["export", "--run", str(tmp_path), "--quant", "int3"]) == 2
    assert "subset of" in capsys.readouterr().err
