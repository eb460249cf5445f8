"""``svlm export --layout transformers.js``: a model folder that transformers.js (npm ``@huggingface/transformers``)
loads in Node, browsers, Electron or React Native, validated against PyTorch like the project's own layout.

    svlm export --run runs/smol --layout transformers.js          # -> runs/smol/export-transformers.js/

The graphs are the project's own (``export.graphs``: vision encoder + projector, token embeddings, one decoder
with past key values), quantized by the same quantizers (``export.build.quantize``); only their names, two
inputs and the files around them change, to what transformers.js 4.3.1 reads (``src/models/session_config.js``,
``modeling_utils.js``, the Idefics3 / Llava model classes and processors):

* ``onnx/vision_encoder{suffix}.onnx``, ``onnx/embed_tokens{suffix}.onnx``, ``onnx/decoder_model_merged{suffix}.onnx``,
  suffix by transformers.js dtype (``DTYPES``): fp32 none, int8 ``_int8``, int4 ``_q4``. One file each under
  protobuf's 2 GB, else external data in ``<file>.onnx_data`` named in ``config.json``'s
  ``transformers.js_config.use_external_data_format``.
* vision: ``pixel_values`` of the rank the family's processor gives (SmolVLM: 5-D ``[batch, images, 3, H, W]``,
  flattened inside the graph) -> ``image_features``.
* decoder: ``past_key_values.{i}.key/value`` in, ``present.{i}.key/value`` out, batch axes named ``batch_size``
  (transformers.js builds the empty first cache from the graph's symbolic dims: ``batch_size`` resolves to the
  batch, every other name to 0, so another name gives a zero-batch cache), and ``num_logits_to_keep`` (a scalar:
  logits for the last k positions, 0 for all) in place of the project's ``logits_to_keep`` positions.
* root: ``config.json``, ``generation_config.json`` (stopping on every end-of-sequence id the runtime stops on),
  a flat ``preprocessor_config.json`` with ``processor_class`` (transformers 5 nests these settings in
  ``processor_config.json``, which transformers.js does not read for them), ``processor_config.json``
  (``image_seq_len``), ``tokenizer.json``, ``tokenizer_config.json`` with the chat template inlined, a model card
  (``library_name: transformers.js``) and ``manifest.json`` (question, labels, answer format, every file with its
  sha256, validation per quantization).

Validation runs the shipped files with onnxruntime in Python the way transformers.js calls them (empty cache from
the symbolic dims, ``num_logits_to_keep``, features merged at the image tokens), so an export needs no Node; the
fp32 graphs must match PyTorch (family tolerance, identical greedy tokens) or nothing is written.
``tests/test_transformersjs.py`` then loads the folder with transformers.js itself. Families whose registry entry
gives a ``transformers_js_unsupported`` reason (InternVL: transformers.js has no class for it) are refused.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from export.build import (ExportError, answer_shape, log, merge, prompt_ids, quantize, source_task, token_ids,
                          torch_reference, validation_images)
from export.compare import agreement_text, compare
from export.graphs import DECODER, EMBED, VISION, export_graphs
from svlm_runtime.package import sha256

#: The transformers.js release these folders are written for and tested with (tests/js/package.json pins it).
TRANSFORMERS_JS_VERSION = "4.3.1"
#: graph -> transformers.js session file name (ImageTextToText in session_config.js)
NAMES = {"vision": "vision_encoder", "embed": "embed_tokens", "decoder": "decoder_model_merged"}
#: the project's quantization -> (transformers.js dtype, file suffix; utils/dtypes.js). int8 is
#: quantize_dynamic's signed QInt8 ("int8"), not transformers.js's "q8" (``_quantized``).
DTYPES = {"fp32": ("fp32", ""), "int8": ("int8", "_int8"), "int4": ("q4", "_q4")}
SINGLE_FILE_BYTES = 1_800_000_000  # protobuf caps one file at 2 GB; larger graphs keep their weights outside
MANIFEST = "manifest.json"
BATCH = "batch_size"  # the batch axis name transformers.js resolves when it builds the first, empty cache


def onnx_file(graph: str, quant: str) -> str:
    """``onnx/<session><suffix>.onnx``, the path transformers.js loads for ``graph`` at ``quant``.

    >>> onnx_file("decoder", "int4")
    'onnx/decoder_model_merged_q4.onnx'
    """
    return f"onnx/{NAMES[graph]}{DTYPES[quant][1]}.onnx"


# --- graph surgery: the project's graphs, transformers.js's names and inputs -----------------------------------
def _rename(graph, old: str, new: str) -> None:
    """Rename the value ``old`` to ``new`` everywhere in ``graph`` (nodes, inputs, outputs, value infos, and the
    subgraphs of If / Loop nodes, which may read it from the outer scope)."""
    for node in graph.node:
        node.input[:] = [new if name == old else name for name in node.input]
        node.output[:] = [new if name == old else name for name in node.output]
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                _rename(sub, old, new)
    for info in (*graph.input, *graph.output, *graph.value_info):
        if info.name == old:
            info.name = new


def _rename_dim(graph, old: str, new: str) -> None:
    for info in (*graph.input, *graph.output, *graph.value_info):
        for dim in info.type.tensor_type.shape.dim:
            if dim.dim_param == old:
                dim.dim_param = new


def _prepend(graph, nodes) -> None:
    """Put ``nodes`` first (the node list must stay topologically sorted)."""
    rest = list(graph.node)
    del graph.node[:]
    graph.node.extend([*nodes, *rest])


def adapt_vision(model, rank: int) -> None:
    """The vision graph takes ``pixel_values`` of ``rank`` (the family processor's: SmolVLM 5-D
    ``[batch, images, 3, H, W]``) and flattens the leading axes into the graph's images axis."""
    from onnx import TensorProto, helper

    g = model.graph
    (pv,) = [i for i in g.input if i.name == "pixel_values"]
    if rank == 4:
        _rename_dim(g, "images", "num_images")
        return
    _rename_dim(g, "images", "all_images")  # inside the graph: every image of every prompt, one axis
    chw = [d.dim_value or d.dim_param for d in pv.type.tensor_type.shape.dim][1:]
    _rename(g, "pixel_values", "pixel_values_flat")
    leading = [BATCH, "num_images", *[f"pixel_axis_{i}" for i in range(rank - 5)]]
    new = helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, [*leading[:rank - 3], *chw])
    g.input.remove([i for i in g.input if i.name == "pixel_values_flat"][0])
    g.input.insert(0, new)
    _prepend(g, [
        helper.make_node("Constant", [], ["tjs_minus_one"], value=helper.make_tensor("", TensorProto.INT64, [1], [-1])),
        helper.make_node("Shape", ["pixel_values"], ["tjs_chw"], start=rank - 3),
        helper.make_node("Concat", ["tjs_minus_one", "tjs_chw"], ["tjs_flat_shape"], axis=0),
        helper.make_node("Reshape", ["pixel_values", "tjs_flat_shape"], ["pixel_values_flat"]),
    ])


def adapt_decoder(model, layers: int) -> None:
    """``past.{i}.*`` -> ``past_key_values.{i}.*``; batch axes -> ``batch_size``; the ``logits_to_keep``
    positions computed from transformers.js's scalar ``num_logits_to_keep``: the last k positions, all for 0
    (``Range(k > 0 ? max(seq - k, 0) : 0, seq)``)."""
    from onnx import TensorProto, helper

    g = model.graph
    for i in range(layers):
        for kv in ("key", "value"):
            _rename(g, f"past.{i}.{kv}", f"past_key_values.{i}.{kv}")
    _rename_dim(g, "batch", BATCH)
    g.input.remove([i for i in g.input if i.name == "logits_to_keep"][0])
    g.input.insert(3, helper.make_tensor_value_info("num_logits_to_keep", TensorProto.INT64, []))
    const = lambda name, v: helper.make_node("Constant", [], [name],  # noqa: E731
                                             value=helper.make_tensor("", TensorProto.INT64, [], [v]))
    _prepend(g, [
        const("tjs_zero", 0), const("tjs_one", 1),
        helper.make_node("Shape", ["inputs_embeds"], ["tjs_seq_1d"], start=1, end=2),
        helper.make_node("Squeeze", ["tjs_seq_1d"], ["tjs_seq"]),
        helper.make_node("Sub", ["tjs_seq", "num_logits_to_keep"], ["tjs_seq_minus_k"]),
        helper.make_node("Max", ["tjs_seq_minus_k", "tjs_zero"], ["tjs_tail_start"]),
        helper.make_node("Greater", ["num_logits_to_keep", "tjs_zero"], ["tjs_some"]),
        helper.make_node("Where", ["tjs_some", "tjs_tail_start", "tjs_zero"], ["tjs_start"]),
        helper.make_node("Range", ["tjs_start", "tjs_seq", "tjs_one"], ["logits_to_keep"]),
    ])


def adapt_embed(model) -> None:
    _rename_dim(model.graph, "batch", BATCH)


def _save(model, path: Path) -> bool:
    """Save one graph as transformers.js loads it: a single file, or its weights in ``<file>_data`` when it is too
    large for one protobuf. Returns whether it has external data."""
    import onnx

    path.parent.mkdir(parents=True, exist_ok=True)
    external = model.ByteSize() > SINGLE_FILE_BYTES
    # small tensors (shapes, scalars) stay inside: onnxruntime reads shape-inference constants only from there
    onnx.save_model(model, str(path), save_as_external_data=external, all_tensors_to_one_file=True,
                    location=path.name + "_data", size_threshold=1024)
    return external


# --- validation: the shipped files, run the way transformers.js runs them -------------------------------------
class TransformersJsRunner:
    """One quantization of an exported folder in onnxruntime, called as transformers.js calls it: the first cache
    built from the decoder's symbolic dims (``batch_size`` -> batch, other names -> 0), ``num_logits_to_keep``
    1 while generating and 0 for every prompt logit, image features written over the image-token embeddings,
    greedy decoding one token at a time until an id of ``generation_config.json``'s ``eos_token_id``.

    It offers what ``export.compare.compare`` reads (``vision``, ``prefill``, ``generate``, ``eos_ids``,
    ``tokenizer``), so both layouts are validated by one rule."""

    def __init__(self, root: str | Path, quant: str, prompt: list[int], answer_format=None):
        import onnxruntime as ort
        from tokenizers import Tokenizer

        root = Path(root)
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        self.sessions = {graph: ort.InferenceSession(str(root / onnx_file(graph, quant)), opts,
                                                     providers=["CPUExecutionProvider"]) for graph in NAMES}
        config = json.loads((root / "config.json").read_text())
        eos = json.loads((root / "generation_config.json").read_text())["eos_token_id"]
        self.image_token_id = config.get("image_token_index", config.get("image_token_id"))
        self.eos_ids = set(eos if isinstance(eos, list) else [eos])
        self.tokenizer = Tokenizer.from_file(str(root / "tokenizer.json"))
        self.prompt_ids = np.asarray(prompt, np.int64)
        if answer_format is None:  # a finished package: its manifest's
            from svlm_runtime.answer_format import AnswerFormat

            answer_format = AnswerFormat.from_manifest(json.loads((Path(root) / "manifest.json").read_text()))
        self.answer_format = answer_format  # during the export: the task's, as the manifest will carry it
        vision = self.sessions["vision"]
        rank = len(vision.get_inputs()[0].shape)
        # compare() passes pixel values as [images, 3, H, W]; a 5-D graph takes them as one prompt's images
        self.vision = SimpleNamespace(run=lambda out, feed: vision.run(out, {
            "pixel_values": feed["pixel_values"].reshape((1,) * (rank - 4) + feed["pixel_values"].shape)}))
        self.decoder = self.sessions["decoder"]
        self.out_names = [o.name for o in self.decoder.get_outputs()]

    def _empty_cache(self, batch: int) -> dict[str, np.ndarray]:
        return {i.name: np.zeros([d if isinstance(d, int) else batch if d == BATCH else 0 for d in i.shape], np.float32)
                for i in self.decoder.get_inputs() if i.name.startswith("past_key_values.")}

    def _decode(self, embeds, past: dict, keep: int):
        batch, new = embeds.shape[:2]
        seen = next(iter(past.values())).shape[2]
        feed = {"inputs_embeds": embeds, "attention_mask": np.ones((batch, seen + new), np.int64),
                "position_ids": np.broadcast_to(np.arange(seen, seen + new, dtype=np.int64), (batch, new)).copy(),
                "num_logits_to_keep": np.array(keep, np.int64), **past}
        out = dict(zip(self.out_names, self.decoder.run(None, feed)))
        return out["logits"], {k.replace("present", "past_key_values"): v for k, v in out.items() if k != "logits"}

    def _embed(self, ids) -> np.ndarray:
        return self.sessions["embed"].run(None, {"input_ids": np.asarray(ids, np.int64)})[0]

    def prefill(self, features: np.ndarray, all_logits: bool = False):
        """The prompt with ``features`` [1, slots, dim] at its image tokens: (logits, cache)."""
        ids = self.prompt_ids[None]
        embeds = self._embed(ids)
        slots = ids[0] == self.image_token_id
        flat = features.reshape(-1, features.shape[-1])
        if slots.sum() != flat.shape[0]:  # transformers.js: "Number of tokens and features do not match"
            raise ExportError(f"prompt has {int(slots.sum())} image tokens, the vision graph gives {flat.shape[0]}")
        embeds[0, slots] = flat
        return self._decode(embeds, self._empty_cache(1), 0 if all_logits else 1)

    def generate(self, *, pixel_values: np.ndarray, max_new_tokens: int, label_probs: bool = False):
        logits, past = self.prefill(self.vision.run(None, {"pixel_values": pixel_values.astype(np.float32)})[0])
        tokens: list[int] = []
        for _ in range(max_new_tokens):
            token = int(np.argmax(logits[0, -1]))
            if token in self.eos_ids:
                break
            tokens.append(token)
            logits, past = self._decode(self._embed([[token]]), past, 1)
        text = self.tokenizer.decode(tokens, skip_special_tokens=True)
        return SimpleNamespace(token_ids=tokens, text=text, label=self.answer_format.parse(text).label)


# --- the folder ------------------------------------------------------------------------------------------------
def _root_files(root: Path, model, processor, tokens: dict, external: list[str]) -> None:
    """config.json, generation_config.json, the processor and tokenizer files as transformers.js reads them."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="svlm_tjs_") as tmp:
        processor.save_pretrained(tmp)  # transformers 5: image processor settings nested in processor_config.json
        saved = json.loads((Path(tmp) / "processor_config.json").read_text())
        tok_config = json.loads((Path(tmp) / "tokenizer_config.json").read_text())
    config = model.config.to_dict()
    if external:
        config["transformers.js_config"] = {"use_external_data_format": {Path(f).name: 1 for f in external}}
    (root / "config.json").write_text(json.dumps(config, indent=2))
    gen = model.generation_config.to_dict()
    gen["eos_token_id"] = tokens["eos_token_ids"]  # stop where the svlm runtime stops (end of turn included)
    (root / "generation_config.json").write_text(json.dumps(gen, indent=2))
    # transformers.js picks the processor class and image-processor settings from a flat preprocessor_config.json
    image = json.loads(processor.image_processor.to_json_string())
    image["processor_class"] = saved["processor_class"]
    (root / "preprocessor_config.json").write_text(json.dumps(image, indent=2))
    (root / "processor_config.json").write_text(json.dumps(
        {k: v for k, v in saved.items() if k not in ("image_processor", "video_processor")}, indent=2))
    processor.tokenizer.backend_tokenizer.save(str(root / "tokenizer.json"))
    tok_config["chat_template"] = processor.chat_template  # transformers.js reads it from here
    (root / "tokenizer_config.json").write_text(json.dumps(tok_config, indent=2))


def _entry(root: Path, rel: str) -> dict:
    f = root / rel
    return {"bytes": f.stat().st_size, "sha256": sha256(f)}


ROOT_FILES = ("config.json", "generation_config.json", "preprocessor_config.json", "processor_config.json",
              "tokenizer.json", "tokenizer_config.json")


def build(cfg, base: str, adapter: Path | None, provenance: dict, tmp: Path) -> dict:
    """``LAYOUTS["transformers.js"]``'s builder: write the folder into ``tmp`` (``export.build.export`` renames it
    into place), validated per quantization; returns ``{quant: manifest}``."""
    import onnx
    import torch
    from transformers import AutoConfig

    from factory.families import family_of
    family = family_of(AutoConfig.from_pretrained(base))
    for refusal in (family.onnx.unsupported, family.onnx.transformers_js_unsupported):
        if refusal:
            raise ExportError(f"--layout transformers.js: {refusal}")
    work = tmp / "work"
    log(f"merging {adapter or 'no adapter'} onto {base} (fp32)")
    model, processor, family, merge_gap = merge(base, adapter, work / "merged")
    style, task = provenance.get("question_style", "cot"), source_task(provenance)
    images = validation_images(cfg, cfg.validate_images, task)
    refs = torch_reference(model, processor, images, cfg.max_new_tokens, style, task)
    ids = prompt_ids(processor, images[0], style, task)
    tokens = token_ids(model, family, processor.tokenizer)
    rank = processor(images=[[images[0]]], text=[task.render_prompt(processor, style)],
                     return_tensors="pt")["pixel_values"].dim()
    log("exporting vision / embed / decoder graphs (torch.onnx, dynamo)")
    dims = export_graphs(model, family, torch.from_numpy(refs[0]["pixel_values"]), work / "svlm")
    fp32 = work / "fp32"  # the project's file names, so that export.build's quantizers apply unchanged
    for name, adapt in ((VISION, lambda m: adapt_vision(m, rank)), (EMBED, adapt_embed),
                        (DECODER, lambda m: adapt_decoder(m, dims["layers"]))):
        graph = onnx.load(str(work / "svlm" / name))
        adapt(graph)
        onnx.checker.check_model(graph, full_check=False)
        _save(graph, fp32 / name)
    int4 = {"block_size": cfg.block_size, "accuracy_level": cfg.accuracy_level}
    order = ["fp32"] + [q for q in cfg.quant if q != "fp32"]  # fp32 is validated first even when not kept
    graphs: dict[str, list[str]] = {}
    external: list[str] = []
    for quant in order:
        src = fp32 if quant == "fp32" else work / quant
        if quant != "fp32":
            quantize(fp32, src, quant, int4)
        graphs[quant] = []
        for graph, name in (("vision", VISION), ("embed", EMBED), ("decoder", DECODER)):
            rel = onnx_file(graph, quant)
            if _save(onnx.load(str(src / name)), tmp / rel):
                external.append(rel)
                graphs[quant].append(rel + "_data")
            graphs[quant].append(rel)
    _root_files(tmp, model, processor, tokens, external)
    results = {}
    for quant in order:
        validation = compare(TransformersJsRunner(tmp, quant, ids, task.answer_format), refs, cfg.max_new_tokens)
        if quant == "fp32" and (validation["max_abs_logit_diff"] > family.onnx.tolerance
                                or validation["greedy_tokens_identical"] < 1):
            raise ExportError(
                f"fp32 transformers.js graphs do not match PyTorch: max |Δlogits| "
                f"{validation['max_abs_logit_diff']:.2e} (tolerance {family.onnx.tolerance:g}), identical greedy "
                f"tokens on {validation['greedy_tokens_identical']:.0%} of {validation['images']} images")
        results[quant] = validation
        log(f"{quant} ({DTYPES[quant][0]}): max |Δlogits| {validation['max_abs_logit_diff']:.2e}, greedy tokens "
             f"identical {validation['greedy_tokens_identical']:.0%}, labels agree: {agreement_text(validation)}")
    if "fp32" not in cfg.quant:
        for rel in graphs.pop("fp32"):
            (tmp / rel).unlink()
        results.pop("fp32")
    shutil.rmtree(work)
    shared = {rel: _entry(tmp, rel) for rel in ROOT_FILES}
    quants = {}
    for quant, validation in results.items():
        files = {**shared, **{rel: _entry(tmp, rel) for rel in graphs[quant]}}
        quants[quant] = {
            "quant": quant, "dtype": DTYPES[quant][0],
            "quantization": ({"method": "MatMulNBits", "bits": 4, **int4, "vision": "int8 dynamic", "embed": "int8"}
                             if quant == "int4" else {"method": "quantize_dynamic QInt8", "embed": "fp32"}
                             if quant == "int8" else {"method": "none"}),
            "files": files, "size_bytes": sum(f["bytes"] for f in files.values()),
            "validation": {**validation, "merge_max_abs_logit_diff": merge_gap,
                           "runtime": "onnxruntime (Python), called as transformers.js calls the graphs"},
        }
    manifest = {
        "layout": "transformers.js", "transformers_js": TRANSFORMERS_JS_VERSION, "family": family.name,
        "model_type": model.config.model_type, "pixel_values_rank": rank, "text": dims, "tokens": tokens,
        "prompt": {"question": task.question(style), "style": style, "input_ids": ids},
        "task": task.manifest(), "labels": list(task.labels), "answer": task.answer_format.to_manifest(),
        "quantizations": quants, "source": provenance,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    (tmp / "README.md").write_text(model_card(manifest, base, tmp.name.removesuffix(".tmp")))
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
    for quant, m in quants.items():
        log(f"{quant}: {m['size_bytes'] / 1e6:.2f} MB as transformers.js dtype {m['dtype']!r}")
    return quants


def model_card(m: dict, base: str, folder: str) -> str:
    """The folder's README: YAML front matter for the hub (``library_name: transformers.js``), how to load it
    offline in Node and in a browser, and the validation figures per dtype."""
    src = m["source"]
    hub_base = "" if Path(base).exists() else f"base_model: {base}\n"
    rows = "\n".join(
        f"| {q} | `{v['dtype']}` | {v['size_bytes'] / 1e6:.1f} | {v['validation']['max_abs_logit_diff']:.3g} | "
        f"{v['validation']['greedy_tokens_identical']:.0%} | {agreement_text(v['validation'])} |"
        for q, v in m["quantizations"].items())
    dtype = next(iter(m["quantizations"].values()))["dtype"]
    answer = (f"`{answer_shape(m, reasoning=False)}`" if m["prompt"]["style"] == "label" else
              f"with reasoning, `{answer_shape(m)}`")
    return f"""---
library_name: transformers.js
pipeline_tag: image-text-to-text
{hub_base}tags:
- onnx
{''.join(f"- {t}{chr(10)}" for t in m['task']['tags'])}- svlm-factory
---

# SVLM Factory export for transformers.js: {m['family']}

Task `{m['task']['name']}`: {m['task']['description']} The model answers {answer}. Source: {src.get('run', src.get('model'))} stage {src.get('stage', '-')}.
Written for `@huggingface/transformers` {m['transformers_js']} (tested with it in Node and in headless Chromium).

```js
import {{ AutoProcessor, AutoModelForVision2Seq, RawImage, env }} from "@huggingface/transformers";
env.allowRemoteModels = false;                 // everything below is read from this folder
env.localModelPath = "/path/to/";              // the folder that holds this one
const id = "{folder}";                         // this folder
const processor = await AutoProcessor.from_pretrained(id);
const model = await AutoModelForVision2Seq.from_pretrained(id, {{ dtype: "{dtype}" }});
const messages = [{{ role: "user", content: [{{ type: "image" }}, {{ type: "text", text: QUESTION }}] }}];
const prompt = processor.apply_chat_template(messages, {{ add_generation_prompt: true }});
const inputs = await processor(prompt, [await RawImage.read("image.jpg")]);
const out = await model.generate({{ ...inputs, max_new_tokens: 160, do_sample: false }});
const text = processor.batch_decode(out.slice(null, [inputs.input_ids.dims[1], null]), {{ skip_special_tokens: true }})[0];
```

`QUESTION` is `prompt.question` in `manifest.json`: "{m['prompt']['question']}"
The label is the text inside the last `<answer>…</answer>` (rule `{m['answer']['rule']}`); labels:
{', '.join(m['labels'])}.

| quantization | dtype | MB | max abs logit gap vs PyTorch | greedy tokens identical | label agreement |
|---|---|---|---|---|---|
{rows}

Figures from the export's validation: the shipped graphs run with onnxruntime as transformers.js calls them, on the
Python processor's pixel values. transformers.js resizes with sharp and interpolates the square on float
pixels, so its own preprocessing differs from Python's by a few grey levels; the project's tests measure that gap
and the label agreement it leaves. Every file is listed in `manifest.json` with its size and sha256.
"""
