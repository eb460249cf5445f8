"""The deployment side: merge + ONNX export + quantization (``build``, ``graphs``; torch) and the validation
against PyTorch (``compare``). The edge runtime that runs the packages is its own distribution,
``svlm_runtime`` (``runtime/``: numpy + onnxruntime + tokenizers + Pillow only; a test enforces it).
"""
