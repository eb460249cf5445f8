"""Export to quantized ONNX and a torch-free runtime (numpy + onnxruntime + tokenizers + Pillow).

Not built yet: see the export issue. Nothing here may import torch, transformers, trl or peft at import time.
"""
