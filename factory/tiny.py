"""Offline random-weight models of every registered family, saved exactly like a hub checkpoint.

No model hub is reachable from CI or this project's CPU machines, so tests and the default ``svlm run``
build models from configs. Each model gets a locally trained byte-level BPE tokenizer (so any text
encodes), the family's special tokens, ``<think>``/``</think>``/``<answer>``/``</answer>`` as single
(non-special, so they survive ``skip_special_tokens``) tokens, the family's real processor class and a chat
template that accepts string and list content. The result loads back through ``AutoModelForImageTextToText``
and ``AutoProcessor`` like any real checkpoint, so the real loading path is the one under test.
"""

from __future__ import annotations

from pathlib import Path

from factory.data.emoset import load_info
from factory.families import MODEL_SIZES, Family, get_family
from factory.prompts import EMOTIONS, FORMAT_TOKENS, QUESTIONS

# A few reasoning sentences so common words become single tokens; the attribute vocabularies add the rest.
_REASONING = [
    "The image is bright and colorful, with warm tones and a smiling face.",
    "The scene is dark and gloomy, with cold blue colors and a sad expression.",
    "There is a vast landscape under a wide sky, which evokes a sense of wonder.",
    "Jagged red shapes and a frowning face suggest conflict and tension.",
    "Murky green blobs and a wrinkled expression suggest something unpleasant.",
    "Wide eyes and deep shadows suggest a threat in the scene.",
    "Soft pastel colors and a calm face suggest peace and comfort.",
    "Bursts of saturated color and dynamic shapes suggest energy and thrill.",
    "brightness colorfulness scene object facial expression human action low medium high",
]


def _corpus() -> list[str]:
    info = load_info()
    words = [name for key in ("scene", "object", "facial_expression", "human_action")
             for name in info[key]["label2idx"]]
    lines = list(QUESTIONS.values()) + _REASONING + [" ".join(EMOTIONS)]
    lines += [" ".join(words[i:i + 20]).replace("_", " ") for i in range(0, len(words), 20)]
    # Repetition weights the BPE merges toward the words the models will actually emit.
    return lines * 20


def train_tokenizer(family: Family, vocab_size: int):
    """A byte-level BPE tokenizer with the family's special tokens and the answer-format tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(family.special_tokens),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    backend.train_from_iterator(_corpus(), trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token=family.eos_token, pad_token=family.pad_token,
                                  extra_special_tokens=dict(family.tokenizer_attrs) or None,
                                  padding_side="left")
    tok.add_tokens(list(FORMAT_TOKENS))
    return tok


def build_tiny(family: str | Family, size: str = "tiny", seed: int = 0):
    """Return ``(model, processor)`` for a random-weight model of ``family`` at ``size``."""
    import torch
    from transformers import GenerationConfig

    fam = get_family(family) if isinstance(family, str) else family
    if size not in MODEL_SIZES:
        raise ValueError(f"unknown model size {size!r}; valid: {list(MODEL_SIZES)}")
    tok = train_tokenizer(fam, MODEL_SIZES[size]["vocab"])
    config, processor = fam.build_tiny(fam, size, tok)
    torch.manual_seed(seed)
    model = fam.model_cls()(config)
    model.generation_config = GenerationConfig(eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                                               bos_token_id=tok.pad_token_id)
    return model.eval(), processor


def save_tiny(family: str, size: str, out: str | Path, seed: int = 0) -> Path:
    """Build a tiny model and save model + processor to ``out`` (loadable with the Auto classes)."""
    import torch

    from factory.families import REAL_SHAPES

    model, processor = build_tiny(family, size, seed)
    if size in REAL_SHAPES:  # ~1-2B parameters: bf16 halves the write, as real checkpoints ship
        model.to(torch.bfloat16)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out
