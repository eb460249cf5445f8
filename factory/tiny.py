"""Offline random-weight models of every registered family, saved exactly like a hub checkpoint.

No model hub is reachable from CI or this project's CPU machines, so tests and the default ``svlm run``
build models from configs, with one of two tokenizers:

* ``real``: the family's real tokenizer, special tokens, chat template (verbatim), image-processor settings
  and generation ids, from the reference checkpoint's files in ``factory/assets/hf``, and the real text
  vocabulary size; only the layer sizes are small. ``<answer>`` is then ``<``, ``answer``, ``>`` and a
  label's tokens depend on what precedes it, as on a real checkpoint. The tests use this one.
* ``small``: a locally trained byte-level BPE tokenizer (1-4k tokens, so any text encodes) with the
  family's special tokens and ``<think>``/``</think>``/``<answer>``/``</answer>`` as single tokens, and our
  chat template. A 151k-token head makes the CPU-sized "small" model ~10x slower to train, so ``svlm run``
  keeps this one by default (``model.tokenizer``).

Either way the family's real processor class is used, and the result loads back through
``AutoModelForImageTextToText`` and ``AutoProcessor`` like any real checkpoint, so the real loading path is
the one under test.
"""

from __future__ import annotations

import json
from pathlib import Path

from factory.data.emoset import load_info
from factory.families import MODEL_SIZES, Family, TinyParts, get_family
from factory.models import TOKENIZERS
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


def small_parts(family: Family, size: str) -> TinyParts:
    """The small local tokenizer and our chat template; the builder sizes the processor to the tower."""
    tok = train_tokenizer(family, MODEL_SIZES[size]["vocab"])
    return TinyParts(tokenizer=tok, chat_template=family.chat_template, vocab_size=len(tok),
                     bos_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)


def _read_json(root: Path, name: str) -> dict:
    return json.loads((root / name).read_text()) if (root / name).is_file() else {}


def real_parts(family: Family) -> TinyParts:
    """The family's real tokenizer, chat template (verbatim), image-processor settings and generation ids."""
    import tempfile

    from transformers import AutoTokenizer

    from factory import assets

    with tempfile.TemporaryDirectory(prefix="svlm_real_") as tmp:
        root = assets.materialize(family.real.assets, tmp)
        tok = AutoTokenizer.from_pretrained(root)
        if (root / "chat_template.jinja").is_file():
            template = (root / "chat_template.jinja").read_text()
        else:
            template = _read_json(root, "chat_template.json")["chat_template"]
        # InternVL keeps the image processor inside processor_config.json; the others in their own file
        image = _read_json(root, "processor_config.json").get("image_processor") \
            or _read_json(root, "preprocessor_config.json")
        gen = _read_json(root, "generation_config.json")
    image = {k: v for k, v in image.items() if k not in ("image_processor_type", "processor_class")}
    return TinyParts(tokenizer=tok, chat_template=template, vocab_size=family.real.vocab_size,
                     bos_token_id=gen.get("bos_token_id", tok.bos_token_id),
                     eos_token_id=gen.get("eos_token_id", tok.convert_tokens_to_ids(family.eos_token)),
                     pad_token_id=gen.get("pad_token_id", tok.pad_token_id), image_processor=image)


def build_tiny(family: str | Family, size: str = "tiny", seed: int = 0, tokenizer: str = "small"):
    """Return ``(model, processor)`` for a random-weight model of ``family`` at ``size``."""
    import torch
    from transformers import GenerationConfig

    fam = get_family(family) if isinstance(family, str) else family
    if size not in MODEL_SIZES:
        raise ValueError(f"unknown model size {size!r}; valid: {list(MODEL_SIZES)}")
    if tokenizer not in TOKENIZERS:
        raise ValueError(f"unknown tokenizer {tokenizer!r}; valid: {list(TOKENIZERS)}")
    parts = real_parts(fam) if tokenizer == "real" else small_parts(fam, size)
    config, processor = fam.build_tiny(fam, size, parts)
    torch.manual_seed(seed)
    model = fam.model_cls()(config)
    model.generation_config = GenerationConfig(eos_token_id=parts.eos_token_id, pad_token_id=parts.pad_token_id,
                                               bos_token_id=parts.bos_token_id)
    return model.eval(), processor


def save_tiny(family: str, size: str, out: str | Path, seed: int = 0, tokenizer: str = "small") -> Path:
    """Build a tiny model and save model + processor to ``out`` (loadable with the Auto classes).

    ``tokenizer`` ("real" or "small") defaults to ``ModelConfig.tokenizer``'s default, ``svlm run``'s."""
    import torch

    from factory.families import REAL_SHAPES

    model, processor = build_tiny(family, size, seed, tokenizer)
    if size in REAL_SHAPES:  # ~1-2B parameters: bf16 halves the write, as real checkpoints ship
        model.to(torch.bfloat16)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out
