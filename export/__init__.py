"""The deployment side: merge + ONNX export + quantization (``build``, ``graphs``; torch) and the edge
runtime (``runtime``, ``preprocess``; numpy + onnxruntime + tokenizers + Pillow only).

Nothing imported by ``export.runtime`` may import torch, transformers, trl or peft; a test enforces it.
"""
