"""Greedy evaluation of a PyTorch model on an EmoSet split: predictions, format rate, accuracy.

Used by ``svlm run`` after every stage and by the benchmarks. Metrics come from scikit-learn.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from factory.data.emoset import EmoSetRecord
from factory.prompts import EMOTIONS, parse_answer, render_prompt


@dataclass
class EvalConfig:
    """How a stage is evaluated: greedy answers on a held-out split."""

    split: str = "val"
    limit: int = 0  # images evaluated per stage (0: the whole split)
    max_new_tokens: int = 160  # the attribute teacher's traces run to ~115 tokens; truncation is a format failure
    batch_size: int = 16


@dataclass
class Prediction:
    image_id: str
    emotion: str
    completion: str
    predicted: str | None
    well_formed: bool


@dataclass
class EvalResult:
    n: int
    accuracy: float
    macro_recall: float
    format_rate: float
    unparsable_rate: float
    predictions: list[Prediction] = field(default_factory=list, repr=False)

    def metrics(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "predictions"}


def generate_answers(model, processor, images, style: str = "cot", max_new_tokens: int = 96,
                     batch_size: int = 8, progress: bool = False) -> list[str]:
    """Greedy completions, batched, with left padding. ``images``: PIL images or image paths; paths are
    opened one batch at a time, so a whole split never sits in memory."""
    import torch
    from PIL import Image

    def as_rgb(item):
        if isinstance(item, Image.Image):
            return item.convert("RGB")
        with Image.open(item) as img:
            return img.convert("RGB")

    prompt = render_prompt(processor, style)
    tokenizer = processor.tokenizer
    tokenizer.padding_side = "left"
    batches = range(0, len(images), batch_size)
    if progress:
        from tqdm import tqdm

        batches = tqdm(batches, desc="evaluating", unit="batch")
    texts: list[str] = []
    device = next(model.parameters()).device
    for start in batches:
        chunk = [as_rgb(item) for item in images[start:start + batch_size]]
        inputs = processor(images=[[img] for img in chunk], text=[prompt] * len(chunk), return_tensors="pt",
                           padding=True).to(device)
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        texts += tokenizer.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    return texts


def score(records: list[EmoSetRecord], completions: list[str], style: str = "cot") -> EvalResult:
    """Parse completions and compute accuracy, macro recall, format and unparsable rates."""
    from sklearn.metrics import accuracy_score, recall_score

    preds = []
    for rec, text in zip(records, completions, strict=True):
        parsed = parse_answer(text, allow_bare_label=(style == "label"))
        well_formed = parsed.well_formed if style == "cot" else parsed.label is not None
        preds.append(Prediction(rec.image_id, rec.emotion, text, parsed.label, well_formed))
    n = len(preds)
    y_true = [p.emotion for p in preds]
    y_pred = [p.predicted or "<unparsable>" for p in preds]
    return EvalResult(
        n=n,
        accuracy=float(accuracy_score(y_true, y_pred)) if n else 0.0,
        macro_recall=float(recall_score(y_true, y_pred, labels=list(EMOTIONS), average="macro",
                                        zero_division=0)) if n else 0.0,
        format_rate=sum(p.well_formed for p in preds) / n if n else 0.0,
        unparsable_rate=sum(p.predicted is None for p in preds) / n if n else 0.0,
        predictions=preds,
    )


def evaluate(model, processor, records: list[EmoSetRecord], style: str = "cot", max_new_tokens: int = 96,
             batch_size: int = 8, progress: bool = False) -> EvalResult:
    """Generate for every record and score the answers."""
    paths = [rec.image_path for rec in records]
    completions = generate_answers(model, processor, paths, style, max_new_tokens, batch_size, progress)
    return score(records, completions, style)
