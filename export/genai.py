"""``svlm export --layout genai``: ONNX Runtime GenAI packages (``onnxruntime-genai`` 0.18.0), which its C, C#,
Java and Objective-C APIs load unchanged on Android, iOS and desktop.

    svlm export --run runs/NAME --layout genai [--quant fp32,int8,int4]

Per quantization, one folder GenAI's ``og.Model`` opens:

* ``model.onnx``: the text decoder, built by GenAI's own builder from the merged checkpoint
  (``python -m onnxruntime_genai.models.builder -p fp32|int8|int4 -e cpu --extra_options exclude_embeds=true``);
* ``vision.onnx``: the dynamic-grid tower (export/qwen_vision.py) behind a Reshape that takes GenAI's flat
  ``pixel_values`` [patches, patch_dim] and ``image_grid_thw`` [1, 3] (one image per prompt);
* ``embedding.onnx``: token embeddings with the image features in the ``<|image_pad|>`` slots, by plain
  indexing (no data-dependent shapes);
* ``genai_config.json`` (the builder's, plus the vision and embedding sections and the image token ids) and
  ``processor_config.json`` in onnxruntime-extensions' format (not transformers' file of that name): smart
  resize within the image policy's pixel bounds, rescale, normalize, patches.

Validated inside the export through GenAI's Python API, on the validation images as files: GenAI preprocesses
each image itself (onnxruntime-extensions' resize: within about one grey level of transformers'), generates
greedily, and its tokens are compared with PyTorch's; the logit gap is at the prompt's last position (GenAI
hands out no logits over the whole prompt) and includes the two preprocessings' difference. fp32 must give identical
greedy tokens or nothing is written; the quantized packages record their agreement.

int8 and int4 packages carry int8 vision and embedding graphs too (``quantize_dynamic`` QInt8 with per-channel
scales, as the svlm layout's: the tower's MatMul / Gemm weights, the embedding table's Gather), so their agreement
covers the whole package; the manifest records what each graph is and the bytes the int8 graphs save.

Only families whose registry entry names a GenAI model type export (``OnnxSplit.genai_type``).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from export.build import (ExportError, log, merge, merged_card, quantize_int8, source_task, torch_reference,
                          validation_images)
from export.compare import agreement_text, first_divergence, until_eos

VISION, EMBED, DECODER = "vision.onnx", "embedding.onnx", "model.onnx"
INT8_OPS = {VISION: ["MatMul", "Gemm"], EMBED: ["Gather"]}  # what quantize_dynamic quantizes in each graph
PRECISION = {"fp32": "fp32", "int8": "int8", "int4": "int4"}  # the builder's -p values


def _vision_graph(model, path: Path, tmp: Path) -> None:
    """GenAI's vision graph: flat patches + grid -> [tokens, hidden]."""
    import onnx
    import torch
    from onnx import TensorProto, helper

    from export.graphs import _export
    from export.qwen_vision import QwenVisionGraph, vision_graph

    class Flat(torch.nn.Module):  # GenAI's embedding takes the features without the batch axis
        def __init__(self, graph: QwenVisionGraph):
            super().__init__()
            self.tower = graph

        def forward(self, pixel_values):
            return self.tower(pixel_values)[0]

    graph, args, names, shapes = vision_graph(model.eval().float(), windows=True)
    inner = tmp / "vision_grid.onnx"
    with torch.no_grad():
        _export(Flat(graph), args, inner, names, ["image_features"], shapes)
    m, dim = graph.merge, args[0].shape[-1]
    # pixel_values [patches, dim] -> [grid_h / m, grid_w / m, m², dim] by the grid's values
    pre = helper.make_graph(
        [helper.make_node("Slice", ["image_grid_thw", "genai_starts", "genai_ends", "genai_axes"], ["genai_hw"]),
         helper.make_node("Div", ["genai_hw", "genai_merge"], ["genai_hw_merged"]),
         helper.make_node("Reshape", ["genai_hw_merged", "genai_flat_shape"], ["genai_hw_flat"]),
         helper.make_node("Concat", ["genai_hw_flat", "genai_tail"], ["genai_grid_shape"], axis=0),
         helper.make_node("Reshape", ["pixel_values", "genai_grid_shape"], ["pixel_values_grid"])],
        "genai_vision_input",
        [helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, ["patches", dim]),
         helper.make_tensor_value_info("image_grid_thw", TensorProto.INT64, [1, 3])],
        [helper.make_tensor_value_info("pixel_values_grid", TensorProto.FLOAT, None)],
        [helper.make_tensor("genai_starts", TensorProto.INT64, [2], [0, 1]),
         helper.make_tensor("genai_ends", TensorProto.INT64, [2], [1, 3]),
         helper.make_tensor("genai_axes", TensorProto.INT64, [2], [0, 1]),
         helper.make_tensor("genai_merge", TensorProto.INT64, [], [m]),
         helper.make_tensor("genai_flat_shape", TensorProto.INT64, [1], [-1]),
         helper.make_tensor("genai_tail", TensorProto.INT64, [2], [m * m, dim])])
    body = onnx.load(str(inner))
    pre_model = helper.make_model(pre, opset_imports=list(body.opset_import), ir_version=body.ir_version)
    merged = onnx.compose.merge_models(pre_model, body, io_map=[("pixel_values_grid", "pixel_values")])
    # one import per domain: the merge lists the default domain twice, which onnxruntime's quantizer refuses
    opsets = {o.domain: o.version for o in merged.opset_import}
    del merged.opset_import[:]
    merged.opset_import.extend(helper.make_opsetid(domain, version) for domain, version in opsets.items())
    onnx.save_model(merged, str(path), save_as_external_data=True, location=path.name + ".data")


def _embedding_graph(model, path: Path) -> None:
    """input_ids [batch, seq] + image_features [tokens, hidden] -> inputs_embeds, the k-th image token's
    embedding replaced by the k-th feature row (an extra zero row serves text-only calls, where GenAI passes
    no features)."""
    import torch
    from torch.export import Dim

    from export.graphs import _export

    class Embedding(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed, self.image = model.get_input_embeddings(), model.config.image_token_id

        def forward(self, input_ids, image_features):
            embeds = self.embed(input_ids)
            slots = input_ids == self.image
            rows = torch.cat([image_features, image_features.new_zeros(1, image_features.shape[-1])])
            index = torch.where(slots, slots.long().flatten().cumsum(0).view_as(input_ids) - 1,
                                torch.full_like(input_ids, image_features.shape[0]))
            return torch.where(slots[..., None], rows[index], embeds)

    hidden = model.config.text_config.hidden_size
    ids = torch.tensor([[1, model.config.image_token_id, model.config.image_token_id, 2, 3]])
    with torch.no_grad():
        _export(Embedding().eval(), (ids, torch.randn(2, hidden)), path, ["input_ids", "image_features"],
                ["inputs_embeds"], {"input_ids": {0: Dim("batch", min=1, max=256), 1: Dim("seq", min=1, max=32768)},
                                    "image_features": {0: Dim("image_tokens", min=0, max=32768)}})


def _int8_graphs(graphs: Path, pkg: Path) -> dict:
    """The vision and embedding graphs of ``graphs`` at int8 into ``pkg`` (``export.build.quantize_int8``, the
    svlm layout's setting); {graph: (fp32 bytes, int8 bytes)}."""
    sizes = {}
    for name, ops in INT8_OPS.items():
        fp32 = sum(f.stat().st_size for f in graphs.glob(name + "*"))  # the graph and its external data
        quantize_int8(graphs / name, pkg / name, ops)
        sizes[name] = (fp32, sum(f.stat().st_size for f in pkg.glob(name + "*")))
    return sizes


def _processor_config(ip) -> dict:
    """onnxruntime-extensions' Qwen2.5-VL image pipeline with the (policy-applied) processor's settings."""
    def op(name, kind, **attrs):
        return {"operation": {"name": name, "type": kind, **({"attrs": attrs} if attrs else {})}}

    return {"processor": {"name": "qwen2_5_image_processor", "transforms": [
        op("decode_image", "DecodeImage", color_space="RGB"),
        op("convert_to_rgb", "ConvertRGB"),
        op("resize", "Resize", width=448, height=448, smart_resize=1, min_pixels=int(ip.size.shortest_edge),
           max_pixels=int(ip.size.longest_edge), patch_size=int(ip.patch_size), merge_size=int(ip.merge_size)),
        op("rescale", "Rescale", rescale_factor=float(ip.rescale_factor)),
        op("normalize", "Normalize", mean=[float(x) for x in ip.image_mean], std=[float(x) for x in ip.image_std],
           qwen2_5_vl=1),
        op("patch_image", "PatchImage", patch_size=int(ip.patch_size),
           temporal_patch_size=int(ip.temporal_patch_size), merge_size=int(ip.merge_size))]}}


def _config(pkg: Path, model, family, processor) -> None:
    """The builder's genai_config.json plus the vision / embedding sections and the image token ids."""
    path = pkg / "genai_config.json"
    config = json.loads(path.read_text())
    session = {"log_id": "onnxruntime-genai", "provider_options": []}
    vision = model.config.vision_config
    config["model"].update({
        "type": family.onnx.genai_type,
        "image_token_id": model.config.image_token_id, "video_token_id": model.config.video_token_id,
        "vision_start_token_id": model.config.vision_start_token_id,
        "embedding": {"filename": EMBED, "inputs": {"input_ids": "input_ids", "image_features": "image_features"},
                      "outputs": {"inputs_embeds": "inputs_embeds"}, "session_options": session},
        "vision": {"filename": VISION, "config_filename": "processor_config.json",
                   "spatial_merge_size": vision.spatial_merge_size,
                   "tokens_per_second": float(getattr(vision, "tokens_per_second", 2)),
                   "patch_size": vision.patch_size,
                   "inputs": {"pixel_values": "pixel_values", "image_grid_thw": "image_grid_thw"},
                   "outputs": {"image_features": "image_features"}, "session_options": session}})
    config["search"].update({"do_sample": False, "top_k": 1, "top_p": 1.0, "repetition_penalty": 1.0})
    path.write_text(json.dumps(config, indent=4))
    (pkg / "processor_config.json").write_text(json.dumps(_processor_config(processor.image_processor), indent=2))


class GenAIPackage:
    """A GenAI package run with ``onnxruntime_genai`` (CPU): greedy generation from an image file."""

    def __init__(self, path: str | Path):
        import onnxruntime_genai as og

        self.og, self.root = og, Path(path)
        self.model = og.Model(str(self.root))
        self.processor = self.model.create_multimodal_processor()
        self.tokenizer = og.Tokenizer(self.model)

    def generate(self, image_path, prompt: str, max_new_tokens: int):
        """(greedy tokens, the logits at the prompt's last position, seconds to the first token, decode seconds)."""
        og = self.og
        t0 = time.perf_counter()
        inputs = self.processor(prompt, images=og.Images.open(str(image_path)))
        params = og.GeneratorParams(self.model)
        n = int(np.asarray(inputs["input_ids"].as_numpy()).shape[-1])
        params.set_search_options(max_length=n + max_new_tokens, do_sample=False)
        gen = og.Generator(self.model, params)
        gen.set_inputs(inputs)  # runs the prompt: the logits are its last position's
        first, tokens, t1 = np.asarray(gen.get_logits()).reshape(-1), [], None
        while not gen.is_done():
            gen.generate_next_token()
            t1 = t1 or time.perf_counter()
            tokens.append(int(gen.get_next_tokens()[0]))
        return tokens, first, t1 - t0, time.perf_counter() - t1


def validate(pkg: Path, refs, image_files, prompt: str, max_new_tokens: int, eos: set[int], decode,
             answer_format) -> dict:
    """GenAI's greedy tokens and labels (judged by the task's ``answer_format``) against the PyTorch references
    (``export.compare``'s keys)."""
    runner = GenAIPackage(pkg)
    gaps, same, ties, valid, agree, labels, first_steps = [], 0, 0, 0, 0, [], []
    for ref, image in zip(refs, image_files):
        tokens, logits, ttft, _ = runner.generate(image, prompt, max_new_tokens)
        got, want = until_eos(tokens, eos), until_eos(ref["tokens"], eos)
        gaps.append(float(np.abs(logits - ref["logits"][-1]).max()))
        if got == want:
            same += 1
        else:
            at = first_divergence(got, want)
            tie = at < len(ref["top2_gaps"]) and ref["top2_gaps"][at] < 1e-4
            ties += tie
            same += tie
            first_steps.append(at)
        ref_label, label = answer_format.parse(decode(want)).label, answer_format.parse(decode(got)).label
        if ref_label is not None:
            valid += 1
            agree += label == ref_label
        labels.append([ref_label, label])
    n = len(refs)
    return {"images": n, "max_abs_logit_diff": max(gaps),
            "logit_diff_at": "the prompt's last position, each runtime preprocessing the image itself",
            "greedy_tokens_identical": same / n, "diverged_at_ties": ties, "first_divergence": first_steps,
            "labels_valid_torch": valid, "label_agreement": agree / valid if valid else None,
            "labels_torch_onnx": labels}


def build(cfg, base: str, adapter: Path | None, provenance: dict, tmp: Path) -> dict:
    """The ``genai`` layout's builder (``export.layouts``): {quant: manifest}."""
    from transformers import AutoConfig

    from factory.families import family_of
    from svlm_runtime.package import sha256

    family = family_of(AutoConfig.from_pretrained(base))
    if family.onnx.genai_type is None:
        raise ExportError(f"{family.name} has no ONNX Runtime GenAI export: GenAI 0.18 knows no model type for it "
                          "(its vision-language types: qwen2_5_vl, qwen3_vl, gemma3, phi3v, phi4mm, ...)")
    try:
        import onnxruntime_genai  # noqa: F401
    except ImportError:
        raise ExportError("the genai layout needs onnxruntime-genai: pip install 'svlm-factory[genai]'") from None
    log(f"merging {adapter or 'no adapter'} onto {base} (fp32)")
    model, processor, family, merge_gap = merge(base, adapter, tmp / "merged")
    merged_card(tmp / "merged", base, provenance)
    style, task = provenance.get("question_style", "cot"), source_task(provenance)
    images = validation_images(cfg, cfg.validate_images, task)
    refs = torch_reference(model, processor, images, cfg.max_new_tokens, style, task)
    files = tmp / "validation_images"
    files.mkdir()
    image_files = []
    for i, img in enumerate(images):  # GenAI reads images from files: lossless, so both see the same pixels
        image_files.append(files / f"{i}.png")
        img.save(image_files[-1])
    graphs = tmp / "graphs"
    graphs.mkdir()
    log("exporting the vision and embedding graphs (torch.onnx, dynamo)")
    _vision_graph(model, graphs / VISION, graphs)
    _embedding_graph(model, graphs / EMBED)
    tok = processor.tokenizer
    eos = model.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, (list, tuple)) else [eos]) | {tok.convert_tokens_to_ids(family.eos_token)}
    prompt = task.render_prompt(processor, style)
    manifests = {}
    for quant in ["fp32"] + [q for q in cfg.quant if q != "fp32"]:
        pkg = tmp / quant
        log(f"{quant}: building the decoder with onnxruntime_genai.models.builder")
        proc = subprocess.run([sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(tmp / "merged"),
                               "-o", str(pkg), "-p", PRECISION[quant], "-e", "cpu", "-c", str(tmp / "builder_cache"),
                               "--extra_options", "exclude_embeds=true"], capture_output=True, text=True)
        if proc.returncode != 0 or not (pkg / DECODER).is_file():
            raise ExportError(f"onnxruntime-genai's builder failed ({quant}): {proc.stderr.strip()[-800:]}")
        if quant == "fp32":
            for f in graphs.iterdir():
                if f.name.startswith((VISION, EMBED)):
                    shutil.copy(f, pkg / f.name)
            int8_sizes = {}
        else:
            int8_sizes = _int8_graphs(graphs, pkg)
        _config(pkg, model, family, processor)
        validation = validate(pkg, refs, image_files, prompt, cfg.max_new_tokens, eos,
                              lambda ids: tok.decode(ids, skip_special_tokens=True), task.answer_format)
        if quant == "fp32" and validation["greedy_tokens_identical"] < 1:
            raise ExportError(f"fp32 GenAI package does not match PyTorch: identical greedy tokens on "
                              f"{validation['greedy_tokens_identical']:.0%} of {validation['images']} images "
                              f"(first divergences at steps {validation['first_divergence']})")
        listed = {f.name: {"bytes": f.stat().st_size, "sha256": sha256(f)} for f in sorted(pkg.iterdir())
                  if f.is_file()}
        manifest = {"layout": "genai", "family": family.name, "runtime": "onnxruntime-genai 0.18.0",
                    "quantization": {"name": quant, "decoder": f"onnxruntime_genai builder -p {PRECISION[quant]}",
                                     **({"vision": "int8 dynamic", "embedding": "int8", "int8_graphs_bytes_saved":
                                         sum(a - b for a, b in int8_sizes.values())} if int8_sizes else
                                        {"vision": "fp32", "embedding": "fp32"})},
                    "prompt": prompt, "task": task.manifest(), "labels": list(task.labels),
                    "answer": task.answer_format.to_manifest(),
                    "source": provenance,
                    "validation": {**validation, "merge_max_abs_logit_diff": merge_gap},
                    "files": listed, "size_bytes": sum(f["bytes"] for f in listed.values()),
                    "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        (pkg / "svlm_manifest.json").write_text(json.dumps(manifest, indent=2))
        manifests[quant] = manifest
        log(f"{quant}: {manifest['size_bytes'] / 1e6:.2f} MB, max |Δlogits| (last prompt position) "
             f"{validation['max_abs_logit_diff']:.2e}, greedy tokens identical "
             f"{validation['greedy_tokens_identical']:.0%}, labels agree: {agreement_text(validation)}")
    shutil.rmtree(files)
    shutil.rmtree(graphs)
    shutil.rmtree(tmp / "builder_cache", ignore_errors=True)
    if "fp32" not in cfg.quant:
        shutil.rmtree(tmp / "fp32")
        manifests.pop("fp32")
    return manifests
