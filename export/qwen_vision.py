"""Qwen2-VL / Qwen2.5-VL vision towers as one ONNX graph that runs at any image grid.

transformers' towers take a flat patch sequence plus ``grid_thw`` and build their positions, window order and
attention spans from the grid's *values* in Python (``grid_thw.tolist()``, ``cu_seqlens`` splits): the
TorchScript exporter freezes them to the example image's grid without a word, and the dynamo exporter fails in
``get_vision_window_index``. Here the same weights run with plain tensor arithmetic on symbolic sizes:

* the graph's input carries the grid in its shape: ``pixel_values`` [grid_h / m, grid_w / m, m², patch_dim]
  (m: spatial merge size), which is the processor's flat [grid_h * grid_w, patch_dim] of one image reshaped,
  as its rows are already in merge-block order (``to_graph_input``);
* the rotary positions come from ``arange`` over those sizes;
* Qwen2.5-VL's window attention is an additive block mask (same window: same ``row // k`` and ``col // k`` in
  merged units, k = window_size / (m * patch)) in the natural token order instead of the window permutation
  and per-window ``cu_seqlens`` splits: attention is permutation-equivariant, the per-token layers
  (norms, MLPs) do not care, and the merger's m² groups stay together, so the output equals transformers'
  up to float summation order (tests/test_qwen_vision.py measures it at several grids).

One image per run (a batch would need a block-diagonal mask per image; the runtimes encode images one by one).
"""

from __future__ import annotations

import torch

PATCH_AXES = ("grid_h_merged", "grid_w_merged")


def to_graph_input(pixel_values, grid_thw, merge: int):
    """The processor's flat patches of one image ([grid_h * grid_w, patch_dim], numpy or torch, ``grid_thw``
    [[1, grid_h, grid_w]]) as the graph's [grid_h / m, grid_w / m, m², patch_dim]."""
    t, h, w = (int(v) for v in (grid_thw[0] if len(grid_thw) == 1 else grid_thw))
    if t != 1:
        raise ValueError(f"one still image per run (temporal grid 1), got grid {t}x{h}x{w}")
    return pixel_values.reshape(h // merge, w // merge, merge * merge, pixel_values.shape[-1])


def _rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class QwenVisionGraph(torch.nn.Module):
    """[grid_h / m, grid_w / m, m², patch_dim] -> the merger's image features [1, grid_h * grid_w / m², hidden]
    (one image: the batch axis the runtimes' prefill takes)."""

    def __init__(self, model, windows: bool):
        super().__init__()
        self.visual = model.model.visual
        cfg = self.visual.config
        self.merge = cfg.spatial_merge_size
        # Qwen2.5-VL: window attention except in fullatt_block_indexes; Qwen2-VL: every block attends fully
        self.full = set(cfg.fullatt_block_indexes) if windows else set(range(len(self.visual.blocks)))
        self.window = cfg.window_size // self.merge // cfg.patch_size if windows else 0

    def forward(self, pixel_values):
        v, m = self.visual, self.merge
        hm, wm = pixel_values.shape[0], pixel_values.shape[1]
        x = v.patch_embed(pixel_values.reshape(-1, pixel_values.shape[-1]))
        # each token's merged-unit row / column and its place in the m x m block, in the processor's order
        rows = torch.arange(hm).view(hm, 1, 1, 1).expand(hm, wm, m, m)
        cols = torch.arange(wm).view(1, wm, 1, 1).expand(hm, wm, m, m)
        sub = torch.arange(m)
        h = (rows * m + sub.view(1, 1, m, 1)).reshape(-1)
        w = (cols * m + sub.view(1, 1, 1, m)).reshape(-1)
        cos, sin = v.rotary_pos_emb(x, torch.stack([h, w], dim=-1))
        cos, sin = cos.unsqueeze(1).float(), sin.unsqueeze(1).float()
        window_bias = None
        if self.window:
            k = self.window
            r, c = rows.reshape(-1) // k, cols.reshape(-1) // k
            same = (r[:, None] == r[None, :]) & (c[:, None] == c[None, :])
            window_bias = torch.zeros(same.shape, dtype=x.dtype).masked_fill(~same, torch.finfo(x.dtype).min)
        for i, block in enumerate(v.blocks):
            x = x + self._attend(block.attn, block.norm1(x), cos, sin, None if i in self.full else window_bias)
            x = x + block.mlp(block.norm2(x))
        return v.merger(x)[None]

    @staticmethod
    def _attend(attn, x, cos, sin, bias):
        n = x.shape[0]
        q, k, val = attn.qkv(x).reshape(n, 3, attn.num_heads, -1).permute(1, 0, 2, 3).unbind(0)
        q = q.float() * cos + _rotate_half(q.float()) * sin
        k = k.float() * cos + _rotate_half(k.float()) * sin
        q, k, val = q.transpose(0, 1), k.transpose(0, 1), val.transpose(0, 1)  # [heads, n, head_dim]
        scores = torch.matmul(q, k.transpose(1, 2)) * attn.scaling
        if bias is not None:
            scores = scores + bias
        out = torch.matmul(torch.softmax(scores, dim=-1).to(val.dtype), val)
        return attn.proj(out.transpose(0, 1).reshape(n, -1))


def vision_graph(model, windows: bool):
    """(module, example inputs, input names, dynamic shapes) for ``export.graphs``: a 3 x 2 merged-unit example
    (distinct sizes above 1, so that neither axis is specialised to the example)."""
    from torch.export import Dim

    graph = QwenVisionGraph(model, windows)
    embed = graph.visual.patch_embed
    patch_dim = embed.in_channels * embed.temporal_patch_size * embed.patch_size ** 2
    example = torch.randn(3, 2, graph.merge ** 2, patch_dim)
    gh, gw = (Dim(name, min=1, max=1024) for name in PATCH_AXES)
    return graph, (example,), ["pixel_values"], {"pixel_values": {0: gh, 1: gw}}
