"""Model cards with Hugging Face hub metadata (YAML front matter) for what the factory writes: the LoRA
adapter of every stage, the merged checkpoint and the exported packages. The hub reads ``base_model``,
``pipeline_tag``, ``library_name`` and ``tags`` from the front matter to list and link a model.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from factory.tasks import Task

TAGS = ["svlm-factory", "vision-language-model", "clgrpo"]  # and the task's tags


def hub_id(source: str | None) -> str | None:
    """``source`` when it names a hub model (``org/name``), None for a local folder: the hub links
    ``base_model`` to a repository, and a path would be a broken link."""
    if not source or Path(source).exists() or source.count("/") != 1 or source.startswith((".", "/")):
        return None
    return source


def front_matter(*, library_name: str, base_model: str | None, labels: list[str], tags: list[str] = (),
                 relation: str | None = None, task: dict | None = None) -> str:
    """The YAML block that opens a card. ``relation``: how it derives from the base (adapter, merge,
    quantized, finetune), the hub's ``base_model_relation``; ``task``: ``Task.manifest()`` (its tags)."""
    import yaml

    task_tags = (task or {}).get("tags", [])
    meta = {"library_name": library_name, "pipeline_tag": "image-text-to-text", "tags": [*TAGS, *task_tags, *tags]}
    base = hub_id(base_model)
    if base:  # (keywords: the hub's key is spelled like the run layout's base-model folder, which test_layout guards)
        meta.update(base_model=base, **({"base_model_relation": relation} if relation else {}))
    meta["labels"] = list(labels)  # the task's classes, as the model answers them
    return "---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True) + "---\n\n"


def write_adapter_card(folder: Path, *, base_model: str, stage: str, run: str, task: Task) -> None:
    """Replace peft's generic card in a stage's adapter folder with one that says what the stage trained."""
    card = front_matter(library_name="peft", base_model=base_model, labels=task.labels, tags=["lora", stage],
                        relation="adapter", task=task.manifest())
    card += f"""# SVLM Factory adapter: {run} · {stage}

{_task_line(task)}A LoRA adapter trained by SVLM Factory's stage `{stage}` (run `{run}`) on `{base_model}`. It answers
`{task.answer_format.render("label", "…")}` with one of: {', '.join(task.labels)}.

```python
from peft import PeftModel
from transformers import AutoModelForImageTextToText, AutoProcessor
base = AutoModelForImageTextToText.from_pretrained("{base_model}")
model = PeftModel.from_pretrained(base, "{folder.name}")
processor = AutoProcessor.from_pretrained("{base_model}")
```

`stage.yaml` and `svlm_config.yaml` beside this folder hold the exact settings; `svlm export` merges it
and writes ONNX packages.
"""
    (Path(folder) / "README.md").write_text(card)


def _task_line(task: Task) -> str:
    return f"Task `{task.name}`: {task.description}\n\n"


def write_merged_card(folder: Path, *, base_model: str, source: dict, task: Task) -> None:
    """The card of the merged full-precision checkpoint that export writes (``<export>/merged``)."""
    card = front_matter(library_name="transformers", base_model=base_model, labels=task.labels,
                        relation="merge" if source.get("adapter") else "finetune", task=task.manifest())
    card += f"""# SVLM Factory merged checkpoint

{_task_line(task)}`{base_model}` with the adapter of {source.get('run', '-')} stage {source.get('stage', '-')} merged in
(full precision). It loads with `AutoModelForImageTextToText.from_pretrained` and `AutoProcessor`, and
answers `{task.answer_format.render("label", "…")}` with one of: {', '.join(task.labels)}.
"""
    (Path(folder) / "README.md").write_text(card)
