"""A toy ONNX package for fast, torch-free runtime tests: three real onnxruntime graphs with the package
layout, a character-level tokenizer, and a decoder whose greedy answer is scripted.

The decoder is a one-layer attention model with a KV cache (``present = concat(past, x)``, causal mask,
attention mask, learned positions), so a mistake in how the runtime slices or feeds its cache changes the
logits. On top of the attention output it adds a per-position table that makes the greedy continuation
``SCRIPT`` and then the end token; the attention part stays small enough not to change the argmax but moves
every probability. The vision graph maps each image's mean colour to the image-slot features.

Built in well under a second; ``tests/test_runtime_unit.py`` and ``tests/test_runtime_cli.py`` use it, and
the hand mutations (``benchmarks/hand_mutations.py``) rely on it to test ``svlm_runtime`` without training a
model.
"""

from __future__ import annotations

import json
import string
from pathlib import Path

import numpy as np

from factory.prompts import EMOTIONS
from svlm_runtime.answer_format import AnswerFormat
from svlm_runtime.package import FORMAT_VERSION, sha256

SCRIPT = "<think>grey sky</think><answer>awe</answer>"
EOS, IMG = "<eos>", "<img>"
HIDDEN, IMAGE_SLOTS, MAX_POSITIONS = 16, 4, 160
PROMPT = "Q: " + IMG * IMAGE_SLOTS + " which emotion? A: "
STRENGTH = 12.0  # the script's logit margin; the attention part stays within a few units


def _tokenizer():
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    chars = [c for c in string.printable if c not in "\n\r\t\x0b\x0c"]
    vocab = {tok: i for i, tok in enumerate(["<unk>", EOS, IMG, *chars])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens([EOS, IMG])
    return tok


def _save(graph, path: Path) -> None:
    import onnx
    from onnx import helper

    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def _graphs(out: Path, vocab: int, prompt_len: int, script_ids: list[int], eos: int, seed: int,
            logits_to_keep: bool) -> None:
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    f32, i64 = TensorProto.FLOAT, TensorProto.INT64

    def init(name, array):
        return numpy_helper.from_array(np.asarray(array), name)

    # vision: pixel_values [n, 3, H, W] -> features [n, slots, hidden] from the mean colour
    _save(helper.make_graph(
        [helper.make_node("ReduceMean", ["pixel_values", "axes"], ["mean"], keepdims=0),
         helper.make_node("MatMul", ["mean", "wv"], ["flat"]),
         helper.make_node("Reshape", ["flat", "shape"], ["image_features"])],
        "vision", [helper.make_tensor_value_info("pixel_values", f32, ["n", 3, "h", "w"])],
        [helper.make_tensor_value_info("image_features", f32, ["n", IMAGE_SLOTS, HIDDEN])],
        [init("axes", np.array([2, 3], np.int64)),
         init("wv", rng.normal(0, 1.0, (3, IMAGE_SLOTS * HIDDEN)).astype(np.float32)),
         init("shape", np.array([-1, IMAGE_SLOTS, HIDDEN], np.int64))]), out / "vision.onnx")

    # embed: input_ids [b, t] -> inputs_embeds [b, t, hidden]
    _save(helper.make_graph(
        [helper.make_node("Gather", ["table", "input_ids"], ["inputs_embeds"], axis=0)],
        "embed", [helper.make_tensor_value_info("input_ids", i64, ["b", "t"])],
        [helper.make_tensor_value_info("inputs_embeds", f32, ["b", "t", HIDDEN])],
        [init("table", rng.normal(0, 1.0, (vocab, HIDDEN)).astype(np.float32))]), out / "embed.onnx")

    # decoder: one attention layer with a KV cache, plus the per-position script table
    script = np.zeros((MAX_POSITIONS, vocab), np.float32)
    for i, token in enumerate([*script_ids, *[eos] * (MAX_POSITIONS + 1 - prompt_len - len(script_ids))]):
        script[prompt_len - 1 + i, token] = STRENGTH  # the logits at position p choose the token at p + 1
    nodes = [
        helper.make_node("Gather", ["positions", "position_ids"], ["pos"], axis=0),
        helper.make_node("Add", ["inputs_embeds", "pos"], ["x"]),
        helper.make_node("Unsqueeze", ["x", "one"], ["x4"]),
        helper.make_node("Concat", ["past.0.key", "x4"], ["present.0.key"], axis=2),
        helper.make_node("Concat", ["past.0.value", "x4"], ["present.0.value"], axis=2),
        helper.make_node("Squeeze", ["present.0.key", "one"], ["k"]),
        helper.make_node("Squeeze", ["present.0.value", "one"], ["v"]),
        helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 2, 1]),
        helper.make_node("MatMul", ["x", "kt"], ["raw"]),
        helper.make_node("Mul", ["raw", "scale"], ["scores"]),
        helper.make_node("Shape", ["x"], ["t"], start=1, end=2),
        helper.make_node("Shape", ["k"], ["l"], start=1, end=2),
        helper.make_node("Concat", ["t", "l"], ["tl"], axis=0),
        helper.make_node("ConstantOfShape", ["tl"], ["ones"], value=helper.make_tensor("v1", f32, [1], [1.0])),
        helper.make_node("Sub", ["l", "t"], ["offset1"]),
        helper.make_node("Squeeze", ["offset1", "zero"], ["offset"]),
        helper.make_node("Trilu", ["ones", "offset"], ["causal"], upper=0),
        helper.make_node("Cast", ["attention_mask"], ["am"], to=f32),
        helper.make_node("Unsqueeze", ["am", "one"], ["am3"]),
        helper.make_node("Mul", ["causal", "am3"], ["allowed"]),
        helper.make_node("Sub", ["onef", "allowed"], ["blocked"]),
        helper.make_node("Mul", ["blocked", "minus"], ["penalty"]),
        helper.make_node("Add", ["scores", "penalty"], ["masked"]),
        helper.make_node("Softmax", ["masked"], ["attn"], axis=-1),
        helper.make_node("MatMul", ["attn", "v"], ["ctx"]),
        helper.make_node("Add", ["x", "ctx"], ["h_all"]),
        # like the exported decoder, logits only at the positions in logits_to_keep (when it has the input)
        *([helper.make_node("Gather", ["h_all", "logits_to_keep"], ["h"], axis=1),
           helper.make_node("Gather", ["position_ids", "logits_to_keep"], ["kept_ids"], axis=1)]
          if logits_to_keep else [helper.make_node("Identity", ["h_all"], ["h"]),
                                  helper.make_node("Identity", ["position_ids"], ["kept_ids"])]),
        helper.make_node("MatMul", ["h", "wout"], ["free"]),
        helper.make_node("Gather", ["script", "kept_ids"], ["scripted"], axis=0),
        helper.make_node("Add", ["free", "scripted"], ["logits"]),
    ]
    past = [helper.make_tensor_value_info(f"past.0.{kv}", f32, ["b", 1, "p", HIDDEN]) for kv in ("key", "value")]
    present = [helper.make_tensor_value_info(f"present.0.{kv}", f32, ["b", 1, "l", HIDDEN]) for kv in ("key", "value")]
    _save(helper.make_graph(
        nodes, "decoder",
        [helper.make_tensor_value_info("inputs_embeds", f32, ["b", "t", HIDDEN]),
         helper.make_tensor_value_info("attention_mask", i64, ["b", "l"]),
         helper.make_tensor_value_info("position_ids", i64, ["b", "t"]),
         *([helper.make_tensor_value_info("logits_to_keep", i64, ["k"])] if logits_to_keep else []), *past],
        [helper.make_tensor_value_info("logits", f32, ["b", "k" if logits_to_keep else "t", vocab]), *present],
        [init("positions", rng.normal(0, 1.0, (MAX_POSITIONS, HIDDEN)).astype(np.float32)),
         init("one", np.array([1], np.int64)), init("zero", np.array([0], np.int64)),
         init("scale", np.array(HIDDEN ** -0.5, np.float32)), init("onef", np.array(1.0, np.float32)),
         init("minus", np.array(-1e9, np.float32)),
         init("wout", rng.normal(0, 0.15, (HIDDEN, vocab)).astype(np.float32)), init("script", script)]),
        out / "decoder.onnx")


def build_toy_package(out: str | Path, *, style: str = "cot", seed: int = 0, script: str = SCRIPT,
                      logits_to_keep: bool = True, answer: dict | None = None,
                      quantization: dict | None = None) -> Path:
    """Write a toy package to ``out`` (a folder that ``svlm_runtime.Package`` loads); returns ``out``.
    ``logits_to_keep=False`` builds the older decoder that returns logits at every position; ``answer`` is the
    manifest's answer section (default: the default tags and rule, as the export writes); ``quantization`` its
    quantization section (default: fp32)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tok = _tokenizer()
    tok.save(str(out / "tokenizer.json"))
    prompt = tok.encode(PROMPT, add_special_tokens=False).ids
    eos, img = tok.token_to_id(EOS), tok.token_to_id(IMG)
    _graphs(out, tok.get_vocab_size(), len(prompt), tok.encode(script, add_special_tokens=False).ids, eos, seed,
            logits_to_keep)
    files = {name: {"bytes": (out / name).stat().st_size, "sha256": sha256(out / name)}
             for name in ("vision.onnx", "embed.onnx", "decoder.onnx", "tokenizer.json")}
    manifest = {
        "format_version": FORMAT_VERSION,
        "family": "toy",
        "graphs": {"vision": "vision.onnx", "embed": "embed.onnx", "decoder": "decoder.onnx"},
        "tokenizer": "tokenizer.json",
        "text": {"layers": 1, "kv_heads": 1, "head_dim": HIDDEN, "hidden": HIDDEN},
        "image": {"kind": "resize_normalize", "height": 8, "width": 8, "resample": 3, "rescale_factor": 1 / 255,
                  "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]},
        "tokens": {"image_token_id": img, "eos_token_ids": [eos], "pad_token_id": 0},
        "prompt": {"question": PROMPT, "input_ids": prompt},
        "labels": list(EMOTIONS),
        "answer": answer if answer is not None else AnswerFormat().to_manifest(),
        "quantization": quantization or {"name": "fp32", "method": "none"},
        "source": {"stage": "toy_stage", "question_style": style},
        "files": files,
        "size_bytes": sum(f["bytes"] for f in files.values()),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return out
