"""``svlm export``: merge a stage's adapter, export ONNX, validate against PyTorch, quantize, package.

    svlm export --run runs/default --stage 4_clgrpo --out runs/default/export --quant fp32,int8,int4

Output: ``<out>/merged/`` (a standard safetensors checkpoint of the merged model) and one self-describing
package per quantization, ``<out>/<quant>/`` with ``vision.onnx``, ``embed.onnx``, ``decoder.onnx``,
``tokenizer.json``, ``manifest.json`` and a model card (``README.md``).

* The adapter is merged onto a full-precision reload of the base (never into 4-bit weights); the merged
  model's logits are checked against base + adapter before anything is exported.
* Everything is built in ``<out>.tmp`` and renamed at the end. The fp32 graphs must match PyTorch — max
  |Δlogits| within the family tolerance and identical greedy tokens on real images — or the export fails
  and nothing is written.
* int8: ``quantize_dynamic`` (QInt8 weights, per-channel scales) on the decoder and the vision graph. int4: ``MatMulNBits``
  (4-bit weight-only, block size configurable) on the decoder, vision at int8. Embeddings stay fp32 in
  int8 (a Gather, cheap) and are int8 in int4. Quantized packages are not held to the fp32 tolerance;
  their logit gap and label agreement with PyTorch are measured and written into the manifest.
* ``quantization.batch_invariant`` says whether an image's answer is independent of the images decoded beside
  it. Not so for int8: ``quantize_dynamic`` quantizes each activation tensor with one scale, a batch's (10
  of 48 answers of the default model changed between batch 16 and batch 1), so the runtime decodes int8
  packages one image at a time. int4's ``MatMulNBits`` scales each row on its own.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from factory.errors import SVLMError
from factory.layout import RunLayout
from export.compare import agreement_text, compare
from export.graphs import DECODER, EMBED, VISION, export_graphs
from export.layouts import LAYOUTS, QUANTS
from svlm_runtime.package import FORMAT_VERSION, MANIFEST, sha256

class ExportError(SVLMError):
    """The export could not be built or did not validate; nothing was written."""


@dataclass
class ExportConfig:
    run: str | None = None  # a training run folder (runs/NAME)
    stage: str | None = None  # its stage to export; None: the last finished stage
    model: str | None = None  # or a plain checkpoint (hub id / folder) with no adapter
    out: str | None = None  # default: <run>/export (layout svlm), <run>/export-<layout> (the others)
    layout: str = "svlm"  # which runtime the packages are for (``LAYOUTS``)
    quant: list[str] | None = None  # a subset of the layout's quantizations; None: all of them
    block_size: int = 32  # int4 MatMulNBits block size
    # int4 MatMulNBits compute precision (onnxruntime's accuracy_level): 4 = int8 activations, the fast CPU
    # path; 1 = fp32 (slower, closest to the fp32 graph); 0 leaves it unset (onnxruntime then computes in fp32)
    accuracy_level: int = 4
    validate_images: int = 32  # validation images compared token by token against PyTorch (all if fewer)
    # the task the model answers (factory.tasks); None: the stage's task.yaml (or a checkpoint folder's)
    task: str | None = None
    max_new_tokens: int = 48
    overwrite: bool = False

    def __post_init__(self):
        if self.layout not in LAYOUTS:
            raise ExportError(f"unknown layout {self.layout!r}; layouts: {', '.join(LAYOUTS)}")
        offered = LAYOUTS[self.layout].quants
        if self.quant is None:
            self.quant = list(offered)
        bad = [q for q in self.quant if q not in offered]
        if bad or not self.quant:
            raise ExportError(f"quant for layout {self.layout} must be a subset of {list(offered)}, got {self.quant}")
        if (self.run is None) == (self.model is None):
            raise ExportError("give either --run (with --stage) or --model")
        if self.block_size < 16 or self.block_size & (self.block_size - 1):
            raise ExportError(f"block_size must be a power of two ≥ 16, got {self.block_size}")
        if self.accuracy_level not in (0, 1, 2, 3, 4):
            raise ExportError(f"accuracy_level must be 0-4 (onnxruntime MatMulNBits), got {self.accuracy_level}")


def log(msg: str) -> None:
    print(f"[svlm export] {msg}", flush=True)


def resolve_source(cfg: ExportConfig) -> tuple[str, Path | None, dict]:
    """(base model source, adapter folder or None, provenance) for the config."""
    task = {"task": cfg.task} if cfg.task is not None else {}
    if cfg.model is not None:
        return cfg.model, None, {"model": cfg.model, **task}
    run = Path(cfg.run)
    if not run.is_dir():
        raise ExportError(f"no run folder {run}")
    layout = RunLayout(run)
    done = layout.finished()
    stage = cfg.stage or (done[-1] if done else None)
    if stage is None:
        raise ExportError(f"{run} has no finished stage; train one first (svlm train)")
    adapter = layout.stage(stage) / "adapter"
    if not (adapter / "adapter_config.json").is_file():
        raise ExportError(f"{run}/{stage} has no adapter ({adapter}); finished stages: {done or 'none'}")
    from factory.train.common import stage_source

    base, adapter, style = stage_source(layout.stage(stage))
    return base, adapter, {"run": str(run), "stage": stage, "adapter": str(adapter), "base": base,
                           "question_style": style, **task}


def merge(base: str, adapter: Path | None, out: Path):
    """Full-precision base + adapter → merged model saved to ``out``; checks logits before and after."""
    import torch
    from peft import PeftModel

    from factory.models import load_model

    loaded = load_model(base, dtype="float32", device="cpu")
    model, processor = loaded.model.eval(), loaded.processor
    gap = 0.0
    if adapter is not None:
        peft_model = PeftModel.from_pretrained(model, str(adapter)).eval()
        probe = probe_inputs(processor)
        with torch.no_grad():
            before = peft_model(**probe).logits
            model = peft_model.merge_and_unload().eval()
            after = model(**probe).logits
        gap = float((before - after).abs().max())
        if gap > 1e-4:
            raise ExportError(f"merged logits differ from base + adapter by {gap:.2e}")
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return model, processor, loaded.family, gap


def source_task(provenance: dict):
    """The task the exported model learned (``factory.tasks``): ``--task`` when given, else the trained stage's
    ``task.yaml`` beside its adapter, or a merged checkpoint folder's; sources written before tasks existed were
    EmoSet's."""
    from factory.tasks import folder_task, load_task

    if "task" in provenance:
        return load_task(provenance["task"])
    return folder_task(Path(provenance["adapter"]).parent if "adapter" in provenance else provenance["model"])


def merged_card(out: Path, base: str, provenance: dict) -> None:
    """The merged checkpoint's model card and its ``task.yaml`` (so it carries its task like a stage)."""
    from factory.cards import write_merged_card
    from factory.tasks import save_task

    task = source_task(provenance)
    save_task(task, out)
    write_merged_card(out, base_model=base, source=provenance, task=task)


def probe_inputs(processor, n: int = 2, side: int | None = None):
    """A batch of real-shaped inputs: the default task's question with random images, 64×80 or ``side``²
    (the merge check compares logits, so any question does; a benchmark wants a real image size)."""
    import numpy as np
    from PIL import Image

    from factory.tasks import load_task

    rng = np.random.default_rng(0)
    shape = (side, side, 3) if side else (64, 80, 3)
    images = [[Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8))] for _ in range(n)]
    prompt = load_task().render_prompt(processor, "cot")
    return processor(images=images, text=[prompt] * n, return_tensors="pt", padding=True)


def prompt_ids(processor, image, style: str = "cot", task=None) -> list[int]:
    """``task``'s question with the image placeholders expanded, as the family's processor does it."""
    from factory.tasks import load_task

    prompt = load_task(task).render_prompt(processor, style)
    return processor(images=[[image]], text=[prompt], return_tensors="np")["input_ids"][0].tolist()


def validation_images(cfg: ExportConfig, n: int, task=None):
    """Real inputs: ``n`` of the run's validation images for ``task`` (all if fewer), else ``n`` synthetic
    ones."""
    from factory.data.emoset import read_split

    paths = []
    root = _run_data(Path(cfg.run), cfg.stage) if cfg.run is not None else None
    if root is not None:
        paths = [r.image_path for r in read_split(root, "val", task=task, check_images="none").records]
    if not paths:
        import tempfile

        from factory.data.synth import SynthConfig, generate

        with tempfile.TemporaryDirectory(prefix="svlm_export_images_") as tmp:
            # n + 8: the generator rounds its count down to whole classes
            generate(SynthConfig(out=str(Path(tmp) / "d"), n=max(n + 8, 16), seed=3, image_size=96),
                     progress=False)
            paths = sorted((Path(tmp) / "d" / "image").rglob("*.jpg"))
            return _spread(paths, n)
    return _spread(paths, n)


def _run_data(run: Path, stage: str | None) -> Path | None:
    """The EmoSet root a run trained on: ``svlm run``'s ``<run>/data``, else the ``data`` of a stage's saved
    ``svlm train`` config (the exported stage's, or any finished one's); None when it has no validation split."""
    import yaml

    layout = RunLayout(run)
    candidates = [layout.data]
    configs = [layout.stage(stage) / "svlm_config.yaml"] if stage else sorted(run.glob("*/svlm_config.yaml"))
    for f in configs:
        if f.is_file():
            data = (yaml.safe_load(f.read_text()) or {}).get("data")
            if isinstance(data, str):
                candidates.append(Path(data))
    return next((c for c in candidates if (c / "val.json").is_file()), None)


def _spread(paths, n: int):
    """``n`` images spread over the sorted list (so over classes: every k-th), loaded into memory."""
    from PIL import Image

    step = max(1, len(paths) // n)
    return [Image.open(p).convert("RGB") for p in paths[::step][:n]]


def torch_reference(model, processor, images, max_new_tokens: int, style: str = "cot", task=None):
    """Per image: HF pixel values, prefill logits over ``task``'s prompt and greedy tokens from ``generate``."""
    import torch

    from factory.families import family_of
    from factory.tasks import load_task

    prompt = load_task(task).render_prompt(processor, style)
    graph_pixels = family_of(model.config).onnx.graph_pixels
    refs = []
    for img in images:
        inputs = processor(images=[[img]], text=[prompt], return_tensors="pt")
        with torch.no_grad():
            logits = model(**inputs).logits[0].numpy()
            out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                                 output_scores=True, return_dict_in_generate=True)
        # the top-2 logit gap per step: a divergence where it is ~0 is a tie, not an export error
        gaps = [float(torch.topk(s[0], 2).values.diff().abs()) for s in out.scores]
        pv = inputs["pixel_values"]  # SmolVLM: [batch, images, 3, H, W]; the vision graph takes [images, 3, H, W]
        pv = graph_pixels(model, inputs) if graph_pixels else pv.reshape(-1, *pv.shape[-3:]).numpy()
        refs.append({"pixel_values": pv, "logits": logits, "top2_gaps": gaps,
                     "tokens": out.sequences[0, inputs["input_ids"].shape[1]:].tolist()})
    return refs


def quantize_int8(src: Path, dst: Path, ops: list[str] | None = None) -> None:
    """One graph at int8 (``quantize_dynamic``: QInt8 weights, per-channel scales; per-tensor ones changed 1 of
    80 test labels of the small model, these none), the project's one int8 setting for every layout. A graph
    whose weights (with its external-data file) pass 1.8 GB is written with external data too."""
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic

    logging.getLogger().setLevel(logging.ERROR)  # the quantizer logs every node it skips
    weights = sum(f.stat().st_size for f in src.parent.glob(src.name + "*"))
    quantize_dynamic(src, dst, weight_type=QuantType.QInt8, op_types_to_quantize=ops, per_channel=True,
                     use_external_data_format=weights > 1_800_000_000)


def quantize(src: Path, dst: Path, quant: str, int4: dict) -> None:
    """Quantize the fp32 graphs in ``src`` into ``dst`` with onnxruntime's quantizers."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    import logging

    dst.mkdir(parents=True, exist_ok=True)
    logging.getLogger().setLevel(logging.ERROR)  # the quantizers log every node they skip

    def int8(name: str, ops=None) -> None:
        quantize_int8(src / name, dst / name, ops)

    int8(VISION, ["MatMul", "Gemm"])
    if quant == "int8":
        int8(DECODER, ["MatMul", "Gemm"])
        for f in src.glob(EMBED + "*"):  # the graph and its external-data file, if the exporter wrote one
            shutil.copy(f, dst / f.name)
    else:
        model = onnx.load(str(src / DECODER))
        q = MatMulNBitsQuantizer(model, block_size=int4["block_size"], is_symmetric=True,
                                 accuracy_level=int4["accuracy_level"] or None)
        q.process()
        onnx.save_model(q.model.model, str(dst / DECODER),
                        save_as_external_data=q.model.model.ByteSize() > 1_800_000_000)
        int8(EMBED, ["Gather"])


def _files(pkg: Path) -> dict:
    """Every file of the package but the manifest, with the size and sha256 the runtime checks on load."""
    return {f.name: {"bytes": f.stat().st_size, "sha256": sha256(f)} for f in sorted(pkg.iterdir())
            if f.is_file() and f.name != MANIFEST}


def token_ids(model, family, tokenizer) -> dict:
    """The manifest's token ids: the image placeholder (the registry's token, checked against the model) and
    every end-of-sequence id the model's generation config stops on, plus the family's end-of-turn token."""
    image = family.image_token_id(tokenizer)
    if image != model.config.image_token_id:
        raise ExportError(f"the tokenizer's {family.image_token} is {image}, the model's image_token_id "
                          f"{model.config.image_token_id}")
    eos = model.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, (list, tuple)) else [eos]) | {tokenizer.convert_tokens_to_ids(family.eos_token)}
    return {"image_token_id": image, "eos_token_ids": sorted(int(e) for e in eos if e is not None),
            "pad_token_id": tokenizer.pad_token_id}


def _write_package(pkg: Path, quant: str, int4: dict, family, processor, dims: dict, spec: dict,
                   ids: list[int], tokens: dict, provenance: dict, validation: dict, merge_gap: float) -> dict:
    """Tokenizer, manifest and model card next to the graphs."""
    task = source_task(provenance)
    tok = processor.tokenizer
    tok.backend_tokenizer.save(str(pkg / "tokenizer.json"))
    manifest = {
        "format_version": FORMAT_VERSION,
        "family": family.name,
        "graphs": {"vision": VISION, "embed": EMBED, "decoder": DECODER},
        "tokenizer": "tokenizer.json",
        "text": dims,
        "image": spec,
        "tokens": tokens,
        "prompt": {"question": task.question(provenance.get("question_style", "cot")), "input_ids": ids},
        "chat_template": processor.chat_template,
        "task": task.manifest(),
        "labels": list(task.labels),
        "answer": task.answer_format.to_manifest(),  # the tags and parsing rule the runtime judges answers by
        "quantization": {"name": quant, "batch_invariant": quant != "int8",
                         **({"method": "MatMulNBits", "bits": 4, **int4,
                                           "vision": "int8 dynamic", "embed": "int8"} if quant == "int4" else
                                          {"method": "quantize_dynamic QInt8", "embed": "fp32"} if quant == "int8"
                                          else {"method": "none"})},
        "source": provenance,
        "validation": {**validation, "merge_max_abs_logit_diff": merge_gap},
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    card = _model_card(manifest)
    (pkg / "README.md").write_text(card)
    manifest["files"] = _files(pkg)
    manifest["size_bytes"] = sum(f["bytes"] for f in manifest["files"].values())
    (pkg / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return manifest


def answer_shape(m: dict, reasoning: bool = True) -> str:
    """The answer a package's model writes, in its manifest's tags (a card shows it)."""
    from svlm_runtime.answer_format import AnswerFormat

    return AnswerFormat.from_manifest(m).render("label", "…" if reasoning else None)


def _model_card(m: dict) -> str:
    from factory.cards import front_matter

    v = m["validation"]
    src = m["source"]
    meta = front_matter(library_name="onnx", base_model=src.get("base", src.get("model")), labels=m["labels"],
                        tags=["onnx", "onnxruntime", m["quantization"]["name"], m["family"]], relation="quantized",
                        task=m["task"])
    return meta + f"""# SVLM Factory export: {m['family']} · {m['quantization']['name']}

Task `{m['task']['name']}`: {m['task']['description']} With reasoning: the model answers
`{answer_shape(m)}`. Source: {src.get('run', src.get('model'))} stage {src.get('stage', '-')}.

Run it with onnxruntime alone (no torch). The runtime, `svlm-runtime`, is not on PyPI: install it from a
checkout of the SVLM Factory repository, then point it at this folder:

```bash
pip install ./runtime                                # numpy, onnxruntime, tokenizers, Pillow
svlm-infer {m['quantization']['name']} image.jpg     # label, probabilities, reasoning, timings (--json, --stream)
```

From Python: `from svlm_runtime import Package; Package("{m['quantization']['name']}").generate("image.jpg")`.

| | |
|---|---|
| quantization | {json.dumps(m['quantization'])} |
| validated on | {v['images']} images |
| max abs logit gap vs PyTorch (prefill) | {v['max_abs_logit_diff']:.3g} |
| greedy tokens identical to PyTorch | {v['greedy_tokens_identical']:.0%} |
| label agreement with PyTorch | {agreement_text(v)} |

Every file is listed in `manifest.json` with its size and sha256; the runtime checks both on load and
refuses a damaged or altered package (`Package(path, verify=False)` checks sizes only).

Labels: {', '.join(m['labels'])}. Question: "{m['prompt']['question']}"
Answer tags and parsing rule: `answer` in `manifest.json` ({m['answer']['rule']}).
The training data and teachers determine what the model has learnt; a random-weight test model learns
from synthetic images only.
"""


MARK = ".svlm-export"  # written at the top of every export folder: only folders with it are replaced or removed


def _made_by_export(folder: Path) -> bool:
    """Whether ``folder`` was written by ``svlm export``: it holds the mark, or (exports older than the mark)
    nothing but ``merged/`` and package folders, one of them with a manifest."""
    if (folder / MARK).is_file():
        return True
    entries = list(folder.iterdir()) if folder.is_dir() else []
    return bool(entries) and all(e.is_dir() and e.name in {"merged", *QUANTS} for e in entries) and \
        any((e / MANIFEST).is_file() for e in entries)


def _check_out(out: Path, cfg: ExportConfig, base: str, adapter: Path | None) -> None:
    """Refuse an ``out`` that would replace, or sit inside, what the export reads: the run folder (an export
    inside it, like the default ``<run>/export``, is fine), its stage folders, the base model's folder."""
    target = out.resolve()
    guarded: list[tuple[str, Path, bool]] = []  # (what, folder, whether out may lie inside it)
    if cfg.run:
        from factory.train.stages import STAGE_ORDER

        run = Path(cfg.run).resolve()
        guarded.append(("the run folder", run, True))
        stage_dirs = [RunLayout(run).stage(s) for s in STAGE_ORDER]
        guarded += [("the stage folder", d, False) for d in stage_dirs if d.is_dir()]
    if adapter is not None:
        guarded.append(("the stage folder", adapter.resolve().parent, False))
    if Path(base).is_dir():
        guarded.append(("the model folder", Path(base).resolve(), False))
    for what, folder, inside_ok in guarded:
        if target == folder or folder.is_relative_to(target):
            raise ExportError(f"--out {out} would replace {what} {folder}; give the export a folder of its own "
                              "(default: <run>/export)")
        if not inside_ok and target.is_relative_to(folder):
            raise ExportError(f"--out {out} lies inside {what} {folder}; give the export a folder of its own")


def export(cfg: ExportConfig) -> dict:
    """Build, validate and write the packages; returns {quant: manifest}.

    Built in ``<out>.tmp`` and swapped in by two renames through ``<out>.old``; a run killed between them
    finds ``<out>`` missing and ``<out>.old`` present, and puts it back first. Folders are only replaced or
    removed when the export made them (``MARK``)."""
    base, adapter, provenance = resolve_source(cfg)
    out = Path(cfg.out) if cfg.out else RunLayout(Path(cfg.run)).export_for(cfg.layout)
    _check_out(out, cfg, base, adapter)
    tmp, old = out.with_name(out.name + ".tmp"), out.with_name(out.name + ".old")
    if not out.exists() and old.is_dir() and _made_by_export(old):
        old.rename(out)
        log(f"restored {out} from {old} (an earlier export stopped between its two renames)")
    if out.exists():
        if not cfg.overwrite:
            raise ExportError(f"{out} exists; pass --overwrite to replace it")
        if not _made_by_export(out):
            raise ExportError(f"{out} was not written by svlm export; refusing to replace it (choose another --out)")
    for leftover in (tmp, old):
        if leftover.exists():
            if not _made_by_export(leftover):
                raise ExportError(f"{leftover} is in the way and was not written by svlm export; move it away")
            shutil.rmtree(leftover)
    tmp.mkdir(parents=True)
    (tmp / MARK).write_text("written by svlm export; the folder may be replaced by the next svlm export --overwrite\n")
    try:
        manifests = _builder(cfg.layout)(cfg, base, adapter, provenance, tmp)
    except BaseException:  # a failed or interrupted build leaves nothing behind
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old)
    else:
        tmp.rename(out)
    log(f"wrote {out}: {', '.join(manifests)}")
    return manifests


def _builder(layout: str):
    import importlib

    module, _, function = LAYOUTS[layout].builder.partition(":")
    return getattr(importlib.import_module(module), function)


def _build(cfg: ExportConfig, base: str, adapter: Path | None, provenance: dict, tmp: Path) -> dict:
    from svlm_runtime.package import Package

    from transformers import AutoConfig

    from factory.families import family_of

    if family_of(AutoConfig.from_pretrained(base)).onnx.unsupported:
        raise ExportError(family_of(AutoConfig.from_pretrained(base)).onnx.unsupported)
    log(f"merging {adapter or 'no adapter'} onto {base} (fp32)")
    model, processor, family, merge_gap = merge(base, adapter, tmp / "merged")
    merged_card(tmp / "merged", base, provenance)
    style, task = provenance.get("question_style", "cot"), source_task(provenance)
    images = validation_images(cfg, cfg.validate_images, task)
    refs = torch_reference(model, processor, images, cfg.max_new_tokens, style, task)
    spec = family.image_spec(processor)
    ids = prompt_ids(processor, images[0], style, task)
    tokens = token_ids(model, family, processor.tokenizer)
    fp32 = tmp / "fp32"
    log("exporting vision / embed / decoder graphs (torch.onnx, dynamo)")
    import torch

    dims = export_graphs(model, family, torch.from_numpy(refs[0]["pixel_values"]), fp32)
    manifests = {}
    order = ["fp32"] + [q for q in cfg.quant if q != "fp32"]
    int4 = {"block_size": cfg.block_size, "accuracy_level": cfg.accuracy_level}
    for quant in order:
        pkg = tmp / quant
        if quant != "fp32":
            quantize(fp32, pkg, quant, int4)
        _write_package(pkg, quant, int4, family, processor, dims, spec, ids, tokens, provenance,
                       {"images": 0, "max_abs_logit_diff": float("nan"), "greedy_tokens_identical": 0.0,
                        "labels_valid_torch": 0, "label_agreement": None}, merge_gap)
        validation = compare(Package(pkg), refs, cfg.max_new_tokens)
        if quant == "fp32":
            if validation["max_abs_logit_diff"] > family.onnx.tolerance or validation["greedy_tokens_identical"] < 1:
                raise ExportError(
                    f"fp32 ONNX does not match PyTorch: max |Δlogits| {validation['max_abs_logit_diff']:.2e} "
                    f"(tolerance {family.onnx.tolerance:g}), identical greedy tokens on "
                    f"{validation['greedy_tokens_identical']:.0%} of {validation['images']} images")
        manifests[quant] = _write_package(pkg, quant, int4, family, processor, dims, spec, ids, tokens,
                                          provenance, validation, merge_gap)
        m = manifests[quant]
        log(f"{quant}: {m['size_bytes'] / 1e6:.2f} MB, max |Δlogits| {validation['max_abs_logit_diff']:.2e}, "
             f"greedy tokens identical {validation['greedy_tokens_identical']:.0%}, "
             f"labels agree: {agreement_text(validation)}")
    if "fp32" not in cfg.quant:
        shutil.rmtree(fp32)
        manifests.pop("fp32")
    return manifests
