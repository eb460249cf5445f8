"""Greedy evaluation of a PyTorch model on an EmoSet split: predictions, format rate, accuracy, and how
many completions were cut by the token budget instead of ending with EOS (a cut answer scores as wrong, so
a budget below what a stage was trained to write would penalise reasoning stages but not the label-only
baseline; ``svlm train`` gives each stage at least its completion length).

Used by ``svlm run`` after every stage and by the benchmarks. Metrics come from scikit-learn.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from factory.data.emoset import EmoSetRecord
from factory.tasks import Task, load_task


@dataclass
class EvalConfig:
    """How a stage is evaluated: greedy answers on a held-out split."""

    split: str = "val"
    limit: int = 0  # images evaluated per stage (0: the whole split)
    # A floor: each stage is evaluated with at least what it was trained to write (GRPO: max_completion_length;
    # SFT: its longest target + EOS). The attribute teacher's traces run to ~115 tokens.
    max_new_tokens: int = 160
    batch_size: int = 16


@dataclass
class Prediction:
    image_id: str
    label: str  # the truth
    completion: str
    predicted: str | None
    well_formed: bool
    truncated: bool | None = None  # stopped by the token budget, not by EOS (None: not recorded)


@dataclass
class EvalResult:
    n: int
    accuracy: float
    macro_recall: float
    format_rate: float
    unparsable_rate: float
    truncation_rate: float | None = None  # share of completions cut by max_new_tokens (None: not recorded)
    max_new_tokens: int | None = None
    predictions: list[Prediction] = field(default_factory=list, repr=False)

    def metrics(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "predictions"}


def generate_answers(model, processor, images, style: str = "cot", max_new_tokens: int = 96,
                     batch_size: int = 8, progress: bool = False, task: Task | None = None) -> list[str]:
    """Greedy completions to ``task``'s question, batched, with left padding. ``images``: PIL images or image
    paths; paths are opened one batch at a time, so a whole split never sits in memory."""
    return generate_completions(model, processor, images, style, max_new_tokens, batch_size, progress, task)[0]


def generate_completions(model, processor, images, style: str = "cot", max_new_tokens: int = 96,
                         batch_size: int = 8, progress: bool = False,
                         task: Task | None = None) -> tuple[list[str], list[bool]]:
    """Like :func:`generate_answers`, also returning per completion whether it was truncated: no EOS among
    its tokens, so generation stopped at ``max_new_tokens``."""
    import torch
    from PIL import Image

    def as_rgb(item):
        if isinstance(item, Image.Image):
            return item.convert("RGB")
        with Image.open(item) as img:
            return img.convert("RGB")

    prompt = load_task(task).render_prompt(processor, style)
    tokenizer = processor.tokenizer
    tokenizer.padding_side = "left"
    eos = model.generation_config.eos_token_id
    eos_ids = set(eos if isinstance(eos, (list, tuple)) else [eos]) | {tokenizer.eos_token_id}
    eos_ids = torch.tensor(sorted(i for i in eos_ids if i is not None))
    batches = range(0, len(images), batch_size)
    if progress:
        from tqdm import tqdm

        batches = tqdm(batches, desc="evaluating", unit="batch")
    texts: list[str] = []
    truncated: list[bool] = []
    device = next(model.parameters()).device
    for start in batches:
        chunk = [as_rgb(item) for item in images[start:start + batch_size]]
        inputs = processor(images=[[img] for img in chunk], text=[prompt] * len(chunk), return_tensors="pt",
                           padding=True).to(device)
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        new = out[:, inputs["input_ids"].shape[1]:].cpu()
        texts += tokenizer.batch_decode(new, skip_special_tokens=True)
        truncated += (~torch.isin(new, eos_ids).any(dim=1)).tolist()
    return texts, truncated


def score(records: list[EmoSetRecord], completions: list[str], style: str = "cot",
          truncated: list[bool] | None = None, max_new_tokens: int | None = None,
          task: Task | None = None) -> EvalResult:
    """Parse completions by ``task``'s rule and compute accuracy, macro recall, format, unparsable and
    truncation rates."""
    from sklearn.metrics import accuracy_score, recall_score

    task = load_task(task)
    preds = []
    cut = truncated if truncated is not None else [None] * len(completions)
    for rec, text, was_cut in zip(records, completions, cut, strict=True):
        parsed = task.parse(text, allow_bare_label=(style == "label"))
        well_formed = parsed.well_formed if style == "cot" else parsed.label is not None
        preds.append(Prediction(rec.image_id, rec.label, text, parsed.label, well_formed, was_cut))
    n = len(preds)
    y_true = [p.label for p in preds]
    y_pred = [p.predicted or "<unparsable>" for p in preds]
    return EvalResult(
        n=n,
        accuracy=float(accuracy_score(y_true, y_pred)) if n else 0.0,
        macro_recall=float(recall_score(y_true, y_pred, labels=list(task.labels), average="macro",
                                        zero_division=0)) if n else 0.0,
        format_rate=sum(p.well_formed for p in preds) / n if n else 0.0,
        unparsable_rate=sum(p.predicted is None for p in preds) / n if n else 0.0,
        truncation_rate=(sum(truncated) / n if n else 0.0) if truncated is not None else None,
        max_new_tokens=max_new_tokens,
        predictions=preds,
    )


def evaluate(model, processor, records: list[EmoSetRecord], style: str = "cot", max_new_tokens: int = 96,
             batch_size: int = 8, progress: bool = False, task: Task | None = None) -> EvalResult:
    """Generate for every record and score the answers (``task``: default EmoSet)."""
    paths = [rec.image_path for rec in records]
    completions, truncated = generate_completions(model, processor, paths, style, max_new_tokens, batch_size,
                                                  progress, task)
    return score(records, completions, style, truncated, max_new_tokens, task)
