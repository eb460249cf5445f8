"""The three ONNX graphs of a VLM (torch side): vision encoder + projector, token embeddings, and a
decoder with past key values that serves both prefill (past length 0) and decode.

The decoder's ``logits_to_keep`` input lists the positions whose logits it computes (transformers' tensor
form of the argument of the same name): generation needs only the last one, and the vocabulary projection
over every prompt position was a quarter of the int4 prefill time and a [1, prompt, vocab] float output
(192 MB for Qwen2.5's 151k vocabulary and a 317-token prompt).

Exported with ``torch.onnx.export(dynamo=True)`` and dynamic batch / sequence / past axes (DESIGN.md §3:
the dynamo exporter handles InternVL and Idefics3/SmolVLM; optimum exports no image-text-to-text model).
The vision example batch has 2 images so the graph does not freeze to one.
"""

from __future__ import annotations

import operator
from pathlib import Path

import torch

VISION, EMBED, DECODER = "vision.onnx", "embed.onnx", "decoder.onnx"


def text_dims(model) -> dict:
    """Layer count, KV heads, head size and hidden size of the language model."""
    cfg = model.config.get_text_config()
    heads = cfg.num_attention_heads
    return {"layers": cfg.num_hidden_layers, "kv_heads": getattr(cfg, "num_key_value_heads", None) or heads,
            "head_dim": getattr(cfg, "head_dim", None) or cfg.hidden_size // heads, "hidden": cfg.hidden_size,
            "vocab": cfg.vocab_size}


def kv_names(layers: int, prefix: str) -> list[str]:
    return [f"{prefix}.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]


class VisionGraph(torch.nn.Module):
    def __init__(self, model, family):
        super().__init__()
        self.model, self.fn = model, family.onnx.image_features

    def forward(self, pixel_values):
        return self.fn(self.model, pixel_values)


class EmbedGraph(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.embed = model.get_input_embeddings()

    def forward(self, input_ids):
        return self.embed(input_ids)


class DecoderGraph(torch.nn.Module):
    """inputs_embeds, attention_mask (past + new), position_ids, logits_to_keep, past k/v per layer ->
    logits at the kept positions, present k/v."""

    def __init__(self, model, family):
        super().__init__()
        self.lm = operator.attrgetter(family.onnx.text_model)(model)
        self.head = model.lm_head
        self.config = model.config.get_text_config()
        self.layers = self.config.num_hidden_layers

    def forward(self, inputs_embeds, attention_mask, position_ids, logits_to_keep, *past):
        from transformers import DynamicCache

        cache = DynamicCache(ddp_cache_data=[(past[2 * i], past[2 * i + 1]) for i in range(self.layers)],
                             config=self.config)
        out = self.lm(inputs_embeds=inputs_embeds, attention_mask=attention_mask, position_ids=position_ids,
                      cache=cache, use_cache=True)
        present = out.past_key_values
        flat = []
        for layer in present.layers:
            flat += [layer.keys, layer.values]
        return (self.head(out.last_hidden_state.index_select(1, logits_to_keep)), *flat)


def _export(module, args, path: Path, input_names, output_names, dynamic_shapes) -> None:
    torch.onnx.export(module.eval(), args, str(path), input_names=input_names, output_names=output_names,
                      dynamic_shapes=dynamic_shapes, dynamo=True, optimize=True, verbose=False,
                      external_data=True)


def export_vision(model, family, path: Path) -> None:
    """The vision graph of a family whose registry entry builds its own (``OnnxSplit.vision_graph``: Qwen's
    dynamic-grid towers, export/qwen_vision.py), with its example input and dynamic axes."""
    module, args, names, shapes = family.onnx.vision_graph(model.eval().float())
    with torch.no_grad():
        _export(module, args, path, names, ["image_features"], shapes)


def export_graphs(model, family, pixel_values: torch.Tensor, out: Path) -> dict:
    """Write vision/embed/decoder ONNX files into ``out``; returns the I/O names for the manifest."""
    from torch.export import Dim

    model = model.eval().float()
    out.mkdir(parents=True, exist_ok=True)
    d = text_dims(model)
    batch, seq, past, total = Dim("batch", min=1, max=256), Dim("seq", min=1, max=8192), \
        Dim("past", min=0, max=8192), Dim("total", min=1, max=16384)
    images, keep = Dim("images", min=1, max=64), Dim("keep", min=1, max=8192)
    with torch.no_grad():
        if family.onnx.vision_graph is not None:
            export_vision(model, family, out / VISION)
        else:
            pv = pixel_values[:1].repeat(2, 1, 1, 1) if pixel_values.shape[0] < 2 else pixel_values[:2]
            _export(VisionGraph(model, family), (pv,), out / VISION, ["pixel_values"], ["image_features"],
                    {"pixel_values": {0: images}})
        ids = torch.zeros(2, 3, dtype=torch.long)
        _export(EmbedGraph(model), (ids,), out / EMBED, ["input_ids"], ["inputs_embeds"],
                {"input_ids": {0: batch, 1: seq}})
        b, s, p = 2, 3, 2
        emb = torch.zeros(b, s, d["hidden"])
        mask = torch.ones(b, p + s, dtype=torch.long)
        pos = torch.arange(p, p + s).expand(b, s)
        pos_axes = {0: batch, 1: seq}
        if family.onnx.positions == "mrope":  # [3, batch, seq]: temporal, height, width (Qwen's M-RoPE)
            pos, pos_axes = pos.expand(3, b, s), {1: batch, 2: seq}
        kept = torch.arange(1, s)  # two positions: a length-1 example would freeze the axis to 1
        kv = tuple(torch.zeros(b, d["kv_heads"], p, d["head_dim"]) for _ in range(2 * d["layers"]))
        shapes = {"inputs_embeds": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: total},
                  "position_ids": pos_axes, "logits_to_keep": {0: keep},
                  "past": tuple({0: batch, 2: past} for _ in kv)}
        _export(DecoderGraph(model, family), (emb, mask, pos, kept, *kv), out / DECODER,
                ["inputs_embeds", "attention_mask", "position_ids", "logits_to_keep",
                 *kv_names(d["layers"], "past")],
                ["logits", *kv_names(d["layers"], "present")], shapes)
    d["positions"] = family.onnx.positions
    return d
