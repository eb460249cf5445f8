"""One loading function for every model: a hub id or a local path, optional 4-bit nf4, a dtype.

Real checkpoints and the offline tiny models go through the same ``from_pretrained`` path. The family is
found from ``config.model_type`` in the registry; ``trust_remote_code`` is never enabled (all registered
families are native transformers classes).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from factory.errors import ConfigError, SVLMError
from factory.families import DEFAULT_FAMILY, FAMILIES, MODEL_SIZES, Family, family_of

DTYPES = ("auto", "float32", "bfloat16", "float16")
TOKENIZERS = ("real", "small")  # factory.tiny builds either (kept here so configs need no tiny import)


@dataclass
class ModelConfig:
    """Which base model a run starts from."""

    source: str | None = None  # hub id or local path; None: build a random model of `family` at `size`
    family: str = DEFAULT_FAMILY
    size: str = "small"
    # The random model's tokenizer: "real" (the family's real tokenizer, chat template and processor settings,
    # 151k tokens for InternVL / Qwen2-VL) or "small" (a 4k-token local BPE). small: the real vocabulary
    # makes the CPU-sized model ~10x slower to train (0.69 -> 7.2 s per step), past svlm run's budget.
    tokenizer: str = "small"
    seed: int = 0
    dtype: str = "auto"

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise ConfigError(f"model.family {self.family!r} is not registered; valid: {', '.join(FAMILIES)}")
        if self.size not in MODEL_SIZES:
            raise ConfigError(f"model.size must be one of {list(MODEL_SIZES)}, got {self.size!r}")
        if self.tokenizer not in TOKENIZERS:
            raise ConfigError(f"model.tokenizer must be one of {list(TOKENIZERS)}, got {self.tokenizer!r}")
        if self.dtype not in DTYPES:
            raise ConfigError(f"model.dtype must be one of {list(DTYPES)}, got {self.dtype!r}")


@dataclass
class LoadedModel:
    model: Any
    processor: Any
    family: Family
    source: str


def _torch_dtype(name: str):
    import torch

    if name not in DTYPES:
        raise SVLMError(f"unknown dtype {name!r}; valid: {', '.join(DTYPES)}")
    if name == "auto":
        # bf16 where the GPU supports it; fp32 on CPU, where bf16 matmuls are slow and LoRA wants fp32.
        return torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float32
    return getattr(torch, name)


def bnb_config(family: Family, compute_dtype):
    """QLoRA's quantization: nf4 with double quantization; vision tower, projector and head stay full."""
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=compute_dtype,
                              llm_int8_skip_modules=list(family.skip_4bit_modules))


def disable_cpu_bf16_kernel(model) -> int:
    """Work around bitsandbytes 0.50 on CPU: after a no-grad ``generate``, training through the avx512-bf16
    4-bit kernel raises "a view of a leaf Variable…" (DESIGN.md §3). Returns how many layers were changed."""
    try:
        import bitsandbytes as bnb
    except ImportError:
        return 0
    count = 0
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False
            count += 1
    return count


def load_model(source: str | Path, *, load_in_4bit: bool = False, dtype: str = "auto",
               device: str | None = None) -> LoadedModel:
    """Load model + processor from a hub id or a local directory.

    Args:
        source: hub id (``OpenGVLab/InternVL3-1B-hf``) or a local checkpoint directory.
        load_in_4bit: quantize the language model to nf4 with bitsandbytes (QLoRA).
        dtype: "auto" (bf16 on capable GPUs, else fp32), "float32", "bfloat16" or "float16".
        device: "cpu", "cuda", … ; default: cuda if available.
    """
    import torch
    from transformers import AutoConfig, AutoProcessor

    source = str(source)
    try:
        config = AutoConfig.from_pretrained(source)
    except (OSError, ValueError) as exc:
        raise SVLMError(f"cannot load a model config from {source!r}: {exc}") from None
    family = family_of(config)
    torch_dtype = _torch_dtype(dtype)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    kwargs: dict[str, Any] = {"dtype": torch_dtype}
    if load_in_4bit:
        kwargs["quantization_config"] = bnb_config(family, torch_dtype)
        kwargs["device_map"] = {"": device}
    model = family.model_cls().from_pretrained(source, **kwargs)
    if not load_in_4bit:
        model.to(device)
    elif device == "cpu":
        disable_cpu_bf16_kernel(model)
    processor = AutoProcessor.from_pretrained(source)
    family.apply_image_policy(processor)
    return LoadedModel(model=model, processor=processor, family=family, source=source)


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())
