"""The attribute-grounded teacher: reasoning written from EmoSet's attribute annotations.

It sees the attributes (brightness, colorfulness, scene, objects, facial expression, human action), never
the label, scores each of the task's labels from the task's lexicon of common-sense associations
(``teacher:`` in ``configs/tasks/<name>.yaml``), writes a reasoning trace that cites the evidence, and
answers the best-scoring label. The trace is then verified against the label like any teacher's. It is the
offline default and the fallback when no endpoint is configured. A task labelled from an attribute
(``facial_expression``) never shows that attribute to the teacher, neither as a score nor as evidence.

The lexicons are general (what a cemetery or a birthday cake usually evokes), not derived from any dataset's
labels; unknown scene and object names simply contribute nothing.
"""

from __future__ import annotations

from factory.tasks import Task, load_task


def _keyword_scores(task: Task, name: str) -> dict[str, float]:
    text = name.strip().lower().replace("/", " ")
    scores: dict[str, float] = {}
    for label, words in task.teacher.keywords.items():
        for word, weight in words.items():
            if word in text or word.replace("_", " ") in text.replace("_", " "):
                scores[label] = scores.get(label, 0.0) + weight
    return scores


def score_labels(attributes: dict, task: Task | None = None) -> tuple[dict[str, float], list[str]]:
    """Score every label of ``task`` (default EmoSet) from the attributes; also return the evidence used."""
    task = load_task(task)
    lex = task.teacher
    # a task labelled from an attribute (scene, facial_expression, ...) must not cite it: that is the answer
    attributes = {k: v for k, v in attributes.items() if k != task.label_from}
    scores = dict.fromkeys(task.labels, 0.0)
    evidence: list[str] = []
    brightness, colorfulness = attributes.get("brightness"), attributes.get("colorfulness")
    if brightness is not None:
        b = float(brightness)
        level = "bright" if b >= 0.6 else "dark" if b <= 0.35 else "moderately lit"
        evidence.append(f"The image is {level} (brightness {b:.1f}).")
        for label, weight in lex.scales.get("brightness", {}).items():
            scores[label] += (b - 0.5) * weight
    if colorfulness is not None:
        c = float(colorfulness)
        level = "vivid and colourful" if c >= 0.6 else "muted" if c <= 0.3 else "moderately colourful"
        evidence.append(f"Its colours are {level} (colorfulness {c:.1f}).")
        for label, weight in lex.scales.get("colorfulness", {}).items():
            scores[label] += (c - 0.5) * weight
    named = []
    if attributes.get("scene"):
        named.append(("scene", str(attributes["scene"]).replace("_", " ").replace("/", " ")))
    for obj in attributes.get("object") or []:
        named.append(("object", str(obj)))
    if attributes.get("human_action"):
        named.append(("action", str(attributes["human_action"]).strip()))
    for kind, name in named:
        for label, w in _keyword_scores(task, name).items():
            scores[label] += w
        if kind == "scene":
            evidence.append(f"The scene looks like a {name}.")
        elif kind == "action":
            evidence.append(f"Someone is {name}.")
    objects = [n for k, n in named if k == "object"]
    if objects:
        evidence.append("Visible objects: " + ", ".join(o.lower() for o in objects) + ".")
    expression = attributes.get("facial_expression")
    links = lex.categories.get("facial_expression", {})
    if expression in links:
        evidence.append(f"A face shows a {expression} expression.")
        for label, w in links[expression].items():
            scores[label] += w
    return scores, evidence


def attribute_response(attributes: dict, hint: str | None = None, task: Task | None = None) -> str:
    """A full ``<think>…</think><answer>…</answer>`` response from attributes (default task: EmoSet).

    With ``hint`` (rationalization) the answer is the hinted label and the trace explains it from the
    evidence that supports it most.

    >>> r = attribute_response({"brightness": 0.2, "colorfulness": 0.1, "facial_expression": "sad"})
    >>> r.endswith("<answer>sadness</answer>")
    True
    """
    task = load_task(task)
    scores, evidence = score_labels(attributes, task)
    ranked = sorted(task.labels, key=lambda label: (-scores[label], task.label2id[label]))
    answer = hint if hint is not None else ranked[0]
    if not evidence:
        evidence = ["The annotations give no clear cue."]
    runner_up = next(label for label in ranked if label != answer)
    conclusion = (f"Taken together, the evidence points to {answer} more than to {runner_up}.")
    return task.format_answer(answer, " ".join(evidence + [conclusion]))
