"""The export layouts ``svlm export --layout`` offers; torch-free, so the CLI can list them cheaply."""

from __future__ import annotations

from dataclasses import dataclass

QUANTS = ("fp32", "int8", "int4")


@dataclass(frozen=True)
class Layout:
    """An export layout: ``builder`` ("module:function") writes the packages into the export's temporary folder,
    one folder per quantization, validated against PyTorch, and returns ``{quant: manifest}``; ``quants`` are the
    quantizations it offers (all by default); ``runs_with`` names the runtime that loads its packages."""

    builder: str
    quants: tuple[str, ...]
    runs_with: str


#: ``svlm export --layout``: every layout shares the source resolution, the ``--out`` guards and the atomic
#: build-then-rename of ``export``; only what is written differs.
LAYOUTS: dict[str, Layout] = {
    "svlm": Layout("export.build:_build", QUANTS, "svlm-runtime (onnxruntime alone)"),
    "transformers.js": Layout("export.transformersjs:build", QUANTS,
                              "transformers.js 4.3.1 in Node or a browser (SmolVLM; dtypes fp32, int8, q4)"),
    "gguf": Layout("export.gguf:build", ("f16", "q8_0", "q4_k_m"),
                   "llama.cpp (llama-mtmd-cli, llama-cpp-python), Ollama, LM Studio (InternVL, Qwen2-VL)"),
    "genai": Layout("export.genai:build", QUANTS,
                    "ONNX Runtime GenAI 0.18 (Python, C, C#, Java, Objective-C; Qwen2.5-VL)"),
}
