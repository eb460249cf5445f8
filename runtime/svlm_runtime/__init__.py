"""svlm-runtime: run an SVLM Factory package (ONNX graphs, tokenizer, manifest) with numpy, onnxruntime,
tokenizers and Pillow only; installs alone (``pip install ./runtime``), no torch.

    from svlm_runtime import Package
    result = Package("runs/default/export/int8").generate("photo.jpg")

Modules: ``package`` (load, check and run a package), ``preprocess`` (images), ``answer_format`` (the answer's
tags and parsing rule, which training shares), ``label_scoring`` (per-label probabilities), ``cli``
(``svlm-infer``).
"""

from svlm_runtime.package import Generation, Package, PackageError, read_manifest

__version__ = "0.1.0"  # released together with svlm-factory, which pins this version
__all__ = ["Generation", "Package", "PackageError", "read_manifest", "__version__"]
