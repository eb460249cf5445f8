"""``svlm export --layout gguf``: packages for llama.cpp, Ollama and LM Studio, validated with llama.cpp's own
multimodal runtime.

    svlm export --run runs/default --layout gguf            # <run>/export-gguf/{f16,q8_0,q4_k_m}

Each package: ``model.gguf`` (the text model with its tokenizer and chat template embedded; f16, q8_0 or
Q4_K_M), ``mmproj.gguf`` (vision encoder + projector, f16, the same file in every package), ``Modelfile``
(Ollama), ``README.md`` (model card: llama-mtmd-cli, Ollama, LM Studio) and ``manifest.json``
(``svlm_runtime.gguf.GGUFModel`` runs it; ``svlm bench`` and the demo accept it).

* The adapter is merged onto the full-precision base (``export.build.merge``); the family's registry entry
  (``Family.gguf``) says what llama.cpp's converter must see (InternVL: a staged copy with the original
  InternVL's class names and tensor prefixes) and how llama.cpp is held to the family's image policy.
* The converter is llama.cpp's ``convert_hf_to_gguf.py`` from the llama-cpp-python sdist of the installed
  bindings (the same llama.cpp commit as the runtime), fetched from PyPI once into ``~/.cache/svlm`` (or
  ``SVLM_LLAMA_CPP_CONVERTER``: an extracted llama.cpp folder or the sdist). It writes the text model at f32;
  llama.cpp's ``llama_model_quantize`` makes f16, q8_0 and Q4_K_M of it.
* Validation runs each package in llama.cpp (``GGUFModel``) on the validation images against PyTorch: the
  prompt llama.cpp builds around each image must be the processor's token for token (image tokens included:
  the image policy matched), and f16 must give PyTorch's greedy tokens on every image, or the export fails
  and nothing is written. q8_0 and Q4_K_M record their logit gap (at the last prompt position) and label
  agreement. f16 is always built and validated; it is dropped at the end when not asked for.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from export.build import (ExportError, answer_shape, log, merge, prompt_ids, source_task, token_ids,
                          torch_reference, validation_images)
from export.compare import agreement_text, first_divergence, until_eos

QUANTS = ("f16", "q8_0", "q4_k_m")
FORMAT_VERSION = 1  # svlm_runtime.gguf.FORMAT_VERSION
MODEL, MMPROJ = "model.gguf", "mmproj.gguf"
CONVERTER_ENV = "SVLM_LLAMA_CPP_CONVERTER"
_CONVERTER_FILES = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/", "LICENSE")


def _ftype(quant: str) -> int:
    import llama_cpp

    return {"f16": llama_cpp.LLAMA_FTYPE_MOSTLY_F16, "q8_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0,
            "q4_k_m": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M}[quant]


def bindings_version() -> str:
    """The installed llama-cpp-python's version (a clear error when it is missing)."""
    try:
        import llama_cpp
    except ImportError:
        raise ExportError("the gguf layout needs llama-cpp-python: pip install 'svlm-factory[gguf]' (or "
                          "llama-cpp-python==0.3.36; on these machines the wheel in ../shared/wheels)") from None
    return llama_cpp.__version__


def _cache_root() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "svlm"


def _extract(sdist: Path, dest: Path) -> None:
    """The converter's files from a llama-cpp-python sdist into ``dest`` (built beside it, then renamed)."""
    tmp = Path(tempfile.mkdtemp(prefix=dest.name + ".", dir=dest.parent))
    try:
        with tarfile.open(sdist) as tar:
            members = []
            for m in tar.getmembers():
                inner = m.name.split("/vendor/llama.cpp/", 1)
                if len(inner) == 2 and any(inner[1] == f or inner[1].startswith(f) for f in _CONVERTER_FILES) \
                        and (m.isfile() or m.isdir()):
                    m.name = inner[1]
                    members.append(m)
            if not any(m.name == "convert_hf_to_gguf.py" for m in members):
                raise ExportError(f"{sdist} holds no vendor/llama.cpp/convert_hf_to_gguf.py")
            tar.extractall(tmp, members=members, filter="data")
        try:
            tmp.rename(dest)
        except OSError:  # another export extracted it meanwhile
            if not (dest / "convert_hf_to_gguf.py").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def converter() -> Path:
    """The folder holding llama.cpp's ``convert_hf_to_gguf.py`` (with ``conversion/`` and ``gguf-py/``) for the
    installed bindings: ``$SVLM_LLAMA_CPP_CONVERTER`` (such a folder or the sdist), else the cached extract of
    the llama-cpp-python sdist, fetched from PyPI with pip on first use."""
    given = os.environ.get(CONVERTER_ENV)
    version = bindings_version()
    cached = _cache_root() / f"llama-cpp-python-{version}-converter"
    if given:
        path = Path(given)
        if path.is_dir() and (path / "convert_hf_to_gguf.py").is_file():
            return path
        if path.name.endswith(".tar.gz") and (cached / "convert_hf_to_gguf.py").is_file():
            return cached  # extracted by an earlier export
        if path.is_file() and path.name.endswith(".tar.gz"):
            cached.parent.mkdir(parents=True, exist_ok=True)
            _extract(path, cached)
            return cached
        raise ExportError(f"{CONVERTER_ENV}={given} is neither a folder with convert_hf_to_gguf.py nor a "
                          "llama-cpp-python sdist (.tar.gz)")
    if (cached / "convert_hf_to_gguf.py").is_file():
        return cached
    cached.parent.mkdir(parents=True, exist_ok=True)
    log(f"fetching llama.cpp's converter: the llama-cpp-python {version} sdist from PyPI (once, into {cached})")
    with tempfile.TemporaryDirectory(prefix="svlm_sdist_") as tmp:
        proc = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                               "--quiet", "--dest", tmp, f"llama-cpp-python=={version}"],
                              capture_output=True, text=True)
        sdists = list(Path(tmp).glob("*.tar.gz"))
        if proc.returncode != 0 or not sdists:
            last = (proc.stderr.strip().splitlines() or ["no sdist downloaded"])[-1]
            raise ExportError(f"could not fetch llama.cpp's converter (the llama-cpp-python {version} sdist) "
                              f"from PyPI: {last}. Offline, set {CONVERTER_ENV} to the sdist or its extracted "
                              "vendor/llama.cpp folder")
        _extract(sdists[0], cached)
    return cached


def stage(merged: Path, family, out: Path) -> Path:
    """A copy of the merged checkpoint as llama.cpp's converter must see it (``family.gguf``): class names,
    config keys and tensor-name prefixes rewritten; files that need no change are hard-linked."""
    spec = family.gguf
    out.mkdir(parents=True)
    renames = dict(spec.tensor_prefixes)
    rewritten = {"config.json", "tokenizer.json", "tokenizer_config.json"}
    for f in merged.iterdir():
        if f.is_file() and f.name not in rewritten and not (renames and f.name.endswith(".safetensors")) \
                and not (renames and f.name.endswith(".safetensors.index.json")):
            _link(f, out / f.name)
    config = json.loads((merged / "config.json").read_text())
    rows = config.get("text_config", config).get("vocab_size") or config.get("vocab_size")
    _tokens_within(merged, out, rows)
    for section, arch in spec.architectures:
        config[section]["architectures"] = [arch]
    config.update(dict(spec.config))
    (out / "config.json").write_text(json.dumps(config, indent=2))
    if renames:
        from safetensors import safe_open
        from safetensors.torch import save_file

        def rename(name: str) -> str:
            return next((new + name[len(old):] for old, new in renames.items() if name.startswith(old)), name)

        for shard in sorted(merged.glob("*.safetensors")):
            with safe_open(shard, "pt") as src:
                tensors = {rename(k): src.get_tensor(k) for k in src.keys()}
                meta = src.metadata()
            save_file(tensors, out / shard.name, metadata=meta)
        index = merged / "model.safetensors.index.json"
        if index.is_file():
            data = json.loads(index.read_text())
            data["weight_map"] = {rename(k): v for k, v in data["weight_map"].items()}
            (out / index.name).write_text(json.dumps(data, indent=2))
    return out


def _tokens_within(merged: Path, out: Path, rows: int | None) -> None:
    """The tokenizer files without tokens whose id has no embedding row (the converter asserts every id is
    below the vocabulary size; InternVL3-hf's tokenizer lists ``</box>`` at 151,674, one past its 151,674
    rows). Such a token can neither be embedded nor generated, so the model loses nothing."""
    tok = json.loads((merged / "tokenizer.json").read_text()) if (merged / "tokenizer.json").is_file() else None
    cfg = json.loads((merged / "tokenizer_config.json").read_text()) \
        if (merged / "tokenizer_config.json").is_file() else None
    dropped = []
    if tok is not None and rows:
        dropped = [t["content"] for t in tok.get("added_tokens", []) if t["id"] >= rows]
        tok["added_tokens"] = [t for t in tok.get("added_tokens", []) if t["id"] < rows]
        vocab = tok.get("model", {}).get("vocab")
        if isinstance(vocab, dict):
            dropped += [k for k, i in vocab.items() if i >= rows]
            tok["model"]["vocab"] = {k: i for k, i in vocab.items() if i < rows}
    if cfg is not None and rows and isinstance(cfg.get("added_tokens_decoder"), dict):
        cfg["added_tokens_decoder"] = {k: v for k, v in cfg["added_tokens_decoder"].items() if int(k) < rows}
    if dropped:
        log(f"tokens past the model's {rows} embedding rows left out of the GGUF vocabulary: {sorted(set(dropped))}")
    for name, data in (("tokenizer.json", tok), ("tokenizer_config.json", cfg)):
        if data is not None:
            (out / name).write_text(json.dumps(data, ensure_ascii=False))


def _link(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def gguf_tensor_count(path: Path) -> int:
    """The tensor count in a GGUF file's header (magic, version, n_tensors)."""
    with open(path, "rb") as f:
        head = f.read(16)
    if len(head) < 16 or head[:4] != b"GGUF":
        raise ExportError(f"{path} is not a GGUF file")
    return struct.unpack("<Q", head[8:16])[0]


def convert(conv: Path, staged: Path, outfile: Path, mmproj: bool) -> None:
    """Run llama.cpp's converter on the staged checkpoint: the text model at f32, or the mmproj at f16."""
    cmd = [sys.executable, str(conv / "convert_hf_to_gguf.py"), str(staged), "--outfile", str(outfile),
           "--outtype", "f16" if mmproj else "f32"] + (["--mmproj"] if mmproj else [])
    # the converter puts its own gguf-py first on the path unless NO_LOCAL_GGUF is set (PyPI's gguf is too old)
    env = {k: v for k, v in os.environ.items() if k != "NO_LOCAL_GGUF"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0 or not outfile.is_file():
        lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
        last = lines[-1] if lines else "no output"
        hint = ""
        index = re.findall(r"\.(\d+)\.", last)
        if "Can not map tensor" in last and index:  # its name map numbers projector layers like tower blocks
            hint = (f" (its tensor-name map covers indices below the vision tower's layer count only: this "
                    f"projector needs a tower of at least {int(index[-1]) + 1} layers)")
        raise ExportError(f"llama.cpp's converter failed on the {'mmproj' if mmproj else 'text model'}: {last}{hint}")
    if gguf_tensor_count(outfile) == 0:  # the converter writes an empty mmproj for tensor names it skips
        raise ExportError(f"llama.cpp's converter wrote {outfile.name} with no tensors: it did not recognise the "
                          "checkpoint's tensor names (see Family.gguf.tensor_prefixes)")


def quantize(src: Path, dst: Path, quant: str, threads: int) -> None:
    """llama.cpp's own quantizer (``llama_model_quantize``): f32 GGUF → f16 / q8_0 / Q4_K_M."""
    import llama_cpp
    from llama_cpp import mtmd_cpp

    from svlm_runtime.gguf import _silence

    _silence(llama_cpp, mtmd_cpp)  # it logs every tensor
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = _ftype(quant)
    params.nthread = threads
    if llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), params) != 0 or not dst.is_file():
        raise ExportError(f"llama.cpp could not quantize the text model to {quant}")


def split_prompt(prompt: str, image_text: str) -> tuple[str, str]:
    """The rendered question before and after its one image placeholder.

    >>> split_prompt("<s>user\\n<IMG>\\nWhich?", "<IMG>")
    ('<s>user\\n', '\\nWhich?')
    """
    if prompt.count(image_text) != 1:
        raise ExportError(f"the prompt holds {prompt.count(image_text)} image placeholders {image_text!r}, "
                          "the GGUF layout needs exactly one")
    before, after = prompt.split(image_text)
    return before, after


def step_candidates(model, processor, images, refs: list[dict], style: str, task, k: int = 16) -> None:
    """Add to each reference PyTorch's ``k`` best tokens and their logits at every greedy step
    (``top_ids`` / ``top_logits``), from one teacher-forced forward pass over the prompt and its tokens: at a
    divergence they say how far below PyTorch's choice llama.cpp's token was."""
    import torch

    from factory.inference import append_tokens

    prompt = task.render_prompt(processor, style)
    for ref, image in zip(refs, images):
        inputs = processor(images=[[image]], text=[prompt], return_tensors="pt")
        tokens = torch.tensor([ref["tokens"]])
        with torch.no_grad():
            logits = model(**append_tokens(inputs, tokens, torch.ones_like(tokens)),
                           logits_to_keep=tokens.shape[1] + 1).logits[0, :-1]
        top = torch.topk(logits, k, dim=-1)
        ref["top_ids"], ref["top_logits"] = top.indices.tolist(), top.values.tolist()


def validate(model, refs: list[dict], images, processor, family, style: str, task, max_new_tokens: int,
             tie: float = 1e-4, rounding_ties: bool = False) -> dict:
    """A GGUF package (``GGUFModel``) against the PyTorch references (``export.build.torch_reference``):
    the prompt's token ids (llama.cpp's text and image tokens vs the processor's), the logit gap at the last
    prompt position, greedy tokens and labels.

    A divergence counts as agreement only at a tie: where PyTorch's top-2 logit gap at the first differing
    step is below ``tie``, or, with ``rounding_ties`` (f16), where the token llama.cpp chose is within the
    largest logit gap measured between the two runtimes on these images (δ) of PyTorch's best in PyTorch's
    own logits at that step (``step_candidates``): f16 weights move every logit by up to about δ, so two
    tokens that close are ordered by rounding; a token PyTorch ranks further down is a real divergence.
    Quantized packages keep the strict ``tie``: their gap is the quantization's."""
    import numpy as np

    from svlm_runtime.gguf import _rgb, resize_for

    image_id = family.image_token_id(processor.tokenizer)
    gaps, same_tokens, same_labels, labels, valid, prompt_ok, diverged = [], 0, 0, [], 0, 0, []
    for ref, image in zip(refs, images):
        parts, chunks = model.prompt_chunks(resize_for(_rgb(image), model.manifest["image"]["resize"]))
        model._mtmd.mtmd_input_chunks_free(chunks)
        got_ids = [t for kind, v in parts for t in (v if kind == "text" else [image_id] * v)]
        prompt_ok += got_ids == prompt_ids(processor, image, style, task)
        gaps.append(float(np.abs(model.prefill_logits(image) - ref["logits"][-1]).max()))
        gen = model.generate(image, max_new_tokens=max_new_tokens, label_probs=False)
        want = until_eos(ref["tokens"], model.eos_ids)
        if gen.token_ids == want:
            same_tokens += 1
        else:
            first = first_divergence(gen.token_ids, want)
            top2 = ref["top2_gaps"][first] if first < len(ref["top2_gaps"]) else float("inf")
            diverged.append((top2, _shortfall(ref, first, gen.token_ids)))
        ref_label = model.answer_format.parse(processor.tokenizer.decode(want, skip_special_tokens=True)).label
        if ref_label is not None:
            valid += 1
            same_labels += gen.label == ref_label
        labels.append([ref_label, gen.label])
    n = len(refs)
    threshold = max(tie, max(gaps)) if rounding_ties else tie
    # f16: llama.cpp's token within the gap of PyTorch's best; quantized: PyTorch's own top-2 gap below tie
    ties = sum((short if rounding_ties else top2) < threshold for top2, short in diverged)  # inf: never a tie
    return {"images": n, "prompt_ids_identical": prompt_ok / n,
            "max_abs_logit_diff": max(gaps), "logit_diff_at": "the last prompt position (llama.cpp keeps only "
                                                             "the logits it is asked for)",
            "greedy_tokens_identical": (same_tokens + ties) / n, "diverged_at_ties": ties, "tie_threshold": threshold,
            # None: llama.cpp stopped there, or chose a token outside PyTorch's top 16
            "top2_gap_at_divergence": [_finite(t) for t, _ in diverged],
            "shortfall_at_divergence": [_finite(d) for _, d in diverged],
            "labels_valid_torch": valid,
            "label_agreement": same_labels / valid if valid else None, "labels_torch_gguf": labels}


def _finite(x: float) -> float | None:
    return None if x == float("inf") else x


def _shortfall(ref: dict, step: int, got: list[int]) -> float:
    """How far below PyTorch's best logit the token llama.cpp chose at ``step`` lies in PyTorch's logits (inf
    when it stopped there, or chose a token outside PyTorch's top k)."""
    if step >= len(ref["top_ids"]) or step >= len(got) or got[step] not in ref["top_ids"][step]:
        return float("inf")
    return ref["top_logits"][step][0] - ref["top_logits"][step][ref["top_ids"][step].index(got[step])]


def _files(pkg: Path) -> dict:
    from svlm_runtime.package import MANIFEST, sha256

    return {f.name: {"bytes": f.stat().st_size, "sha256": sha256(f)} for f in sorted(pkg.iterdir())
            if f.is_file() and f.name != MANIFEST}


def _write_package(pkg: Path, quant: str, family, processor, before: str, after: str, image: dict, tokens: dict,
                   provenance: dict, validation: dict, merge_gap: float, version: str) -> dict:
    from svlm_runtime.package import MANIFEST

    task = source_task(provenance)
    manifest = {
        "layout": "gguf", "format_version": FORMAT_VERSION, "family": family.name,
        "model": MODEL, "mmproj": MMPROJ,
        "runtime": {"llama_cpp_python": version},
        "prompt": {"question": task.question(provenance.get("question_style", "cot")), "before": before,
                   "after": after},
        "image": image, "tokens": tokens,
        "chat_template": processor.chat_template,  # also embedded in model.gguf (tokenizer.chat_template)
        "task": task.manifest(), "labels": list(task.labels), "answer": task.answer_format.to_manifest(),
        "quantization": {"name": quant, "text": quant.upper(), "mmproj": "F16", "method": "llama_model_quantize"
                         if quant != "f32" else "none"},
        "source": provenance,
        "validation": {**validation, "merge_max_abs_logit_diff": merge_gap},
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    (pkg / "Modelfile").write_text(modelfile(manifest, family))
    (pkg / "README.md").write_text(model_card(manifest))
    manifest["files"] = _files(pkg)
    manifest["size_bytes"] = sum(f["bytes"] for f in manifest["files"].values())
    (pkg / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return manifest


def modelfile(m: dict, family) -> str:
    """An Ollama Modelfile: both GGUF files, the family's chat format (registry), greedy decoding, and a stop
    at the family's end-of-turn token."""
    lines = [f"# SVLM Factory export: {m['family']} · {m['quantization']['name']} (ollama create NAME -f Modelfile)",
             f"FROM ./{MODEL}", f"FROM ./{MMPROJ}", f'TEMPLATE """{family.gguf.ollama_template}"""',
             "PARAMETER temperature 0", f'PARAMETER stop "{family.eos_token}"', "PARAMETER num_ctx 4096"]
    return "\n".join(lines) + "\n"


def model_card(m: dict) -> str:
    v, src, img = m["validation"], m["source"], m["image"]
    ollama = f"svlm-{m['task']['name'].replace('_', '-')}"  # the Ollama model, named after the task
    q = m["quantization"]["name"]
    bounds = f" --image-min-tokens {img['min_tokens']} --image-max-tokens {img['max_tokens']}" \
        if "max_tokens" in img else ""
    resize = img["resize"]
    if resize["kind"] == "fixed":
        policy = (f"one tile: the whole image resized to {resize['width']}x{resize['height']}. Resize photos to "
                  f"{resize['width']}x{resize['height']} before giving them to llama.cpp, as the processor does (and "
                  "as validated): llama.cpp sends any larger image as a tile plus a thumbnail, a prompt the model "
                  "never saw.")
    else:
        policy = (f"{img['min_tokens']}-{img['max_tokens']} image tokens (sides multiples of {resize['factor']} px, "
                  f"at most {resize['max_pixels']} pixels). Pass these bounds to llama.cpp "
                  f"(`--image-min-tokens {img['min_tokens']} --image-max-tokens {img['max_tokens']}`): its default "
                  "budget (8-4096 tokens) would give the model images at sizes it never saw.")
    return f"""---
library_name: gguf
pipeline_tag: image-text-to-text
tags: [gguf, llama.cpp, ollama, lm-studio, vision, {', '.join(m['task']['tags'] + ['svlm-factory'])}]
base_model: {src.get('base', src.get('model', 'unknown'))}
quantization: {q}
---

# SVLM Factory export: {m['family']} · {q} (GGUF)

Task `{m['task']['name']}`: {m['task']['description']} With reasoning: the model answers
`{answer_shape(m)}`. Source: {src.get('run', src.get('model'))} stage {src.get('stage', '-')}.

Files: `{MODEL}` (text model, {m['quantization']['text']}, tokenizer and chat template embedded) and `{MMPROJ}`
(vision encoder + projector, F16). Image policy the model was trained with: {policy}
Validated with llama.cpp from llama-cpp-python {m['runtime']['llama_cpp_python']}.

## llama.cpp

```bash
llama-mtmd-cli -m {MODEL} --mmproj {MMPROJ} --image photo.jpg --temp 0 -n 160{bounds} \\
    -p "{m['prompt']['question']}"
```

## Ollama

```bash
ollama create {ollama} -f Modelfile     # this folder's Modelfile: both files, greedy decoding
ollama run {ollama} "{m['prompt']['question']} ./photo.jpg"
```

Ollama sizes images itself and its image-token budget is not set by the Modelfile; Ollama was not run here
(not installable offline), so this path is written to its Modelfile documentation but not validated.

## LM Studio

Copy this folder to `~/.lmstudio/models/svlm/{m['family']}-{q}/` (LM Studio pairs `{MMPROJ}` with the model by its
name), load it, set temperature 0 and attach the image (sized as above) with the question above. Not run here.

## Python (llama-cpp-python, as validated)

```python
from svlm_runtime.gguf import GGUFModel          # pip install ./runtime llama-cpp-python
GGUFModel("{q}").generate("photo.jpg").label      # same interface as the ONNX packages
```

## Validation against PyTorch (llama.cpp's multimodal runtime, {v['images']} images)

| | |
|---|---|
| prompt token ids identical to the processor's (image tokens included) | {v['prompt_ids_identical']:.0%} |
| max abs logit gap vs PyTorch (last prompt position) | {v['max_abs_logit_diff']:.3g} |
| greedy tokens identical to PyTorch | {v['greedy_tokens_identical']:.0%} |
| label agreement with PyTorch | {agreement_text(v)} |

Every file is listed in `manifest.json` with its size and sha256. Labels: {', '.join(m['labels'])}.
The training data and teachers determine what the model has learnt; a random-weight test model learns
from synthetic images only.
"""


def build(cfg, base: str, adapter: Path | None, provenance: dict, tmp: Path) -> dict:
    """The ``gguf`` layout's builder (``export.layouts``): {quant: manifest} for the asked quantizations."""
    from transformers import AutoConfig

    from factory.families import family_of
    from svlm_runtime.gguf import GGUFModel

    family = family_of(AutoConfig.from_pretrained(base))
    if family.gguf.unsupported:
        raise ExportError(family.gguf.unsupported)
    version = bindings_version()
    conv = converter()
    log(f"merging {adapter or 'no adapter'} onto {base} (fp32)")
    work = tmp / "work"
    model, processor, family, merge_gap = merge(base, adapter, work / "merged")
    style, task = provenance.get("question_style", "cot"), source_task(provenance)
    images = validation_images(cfg, cfg.validate_images, task)
    refs = torch_reference(model, processor, images, cfg.max_new_tokens, style, task)
    step_candidates(model, processor, images, refs, style, task)
    tokens = token_ids(model, family, processor.tokenizer)
    before, after = split_prompt(task.render_prompt(processor, style), family.gguf.image_text)
    ip = processor.image_processor
    image = {"resize": family.gguf.resize(ip)}
    if family.gguf.image_tokens is not None:
        image["min_tokens"], image["max_tokens"] = family.gguf.image_tokens(ip)
    del model
    log(f"converting with llama.cpp's converter ({conv})")
    staged = stage(work / "merged", family, work / "staged")
    f32, mmproj = work / "model-f32.gguf", work / MMPROJ
    convert(conv, staged, f32, mmproj=False)
    convert(conv, staged, mmproj, mmproj=True)
    shutil.rmtree(staged)
    threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    manifests = {}
    order = ["f16"] + [q for q in cfg.quant if q != "f16"]
    for quant in order:
        pkg = tmp / quant
        pkg.mkdir()
        quantize(f32, pkg / MODEL, quant, threads)
        _link(mmproj, pkg / MMPROJ)
        blank = {"images": 0, "max_abs_logit_diff": float("nan"), "greedy_tokens_identical": 0.0,
                 "prompt_ids_identical": 0.0, "labels_valid_torch": 0, "label_agreement": None}
        _write_package(pkg, quant, family, processor, before, after, image, tokens, provenance, blank, merge_gap,
                       version)
        runner = GGUFModel(pkg, verify=False)
        validation = validate(runner, refs, images, processor, family, style, task, cfg.max_new_tokens,
                              rounding_ties=quant == "f16")
        runner.close()
        if validation["prompt_ids_identical"] < 1:
            raise ExportError(f"llama.cpp's prompt differs from the processor's on "
                              f"{1 - validation['prompt_ids_identical']:.0%} of {validation['images']} images "
                              "(text or image-token count): the image policy is not matched")
        if quant == "f16" and validation["greedy_tokens_identical"] < 1:
            raise ExportError(f"f16 GGUF does not match PyTorch in llama.cpp: identical greedy tokens on "
                              f"{validation['greedy_tokens_identical']:.0%} of {validation['images']} images "
                              f"(max |Δlogits| {validation['max_abs_logit_diff']:.2e})")
        manifests[quant] = m = _write_package(pkg, quant, family, processor, before, after, image, tokens,
                                              provenance, validation, merge_gap, version)
        log(f"{quant}: {m['size_bytes'] / 1e6:.2f} MB, max |Δlogits| {validation['max_abs_logit_diff']:.2e}, "
             f"greedy tokens identical {validation['greedy_tokens_identical']:.0%}, "
             f"labels agree: {agreement_text(validation)}")
    shutil.rmtree(work)
    if "f16" not in cfg.quant:
        shutil.rmtree(tmp / "f16")
        manifests.pop("f16")
    return manifests
