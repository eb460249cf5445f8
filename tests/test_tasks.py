"""Tasks as data (``factory/tasks.py``, ``configs/tasks/*.yaml``): loading and checks, the answer rule's aliases
and case in the manifest, the reader and the attribute teacher for a task labelled from an attribute, and the
whole ``svlm run`` chain on the second shipped task (``facial_expression``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from factory.errors import ConfigError
from factory.tasks import load_task, shipped_tasks
from svlm_runtime.answer_format import AnswerFormat

from run_args import short_grpo

FACES = ["angry", "disgust", "fear", "happy", "sad", "surprise"]


def _write(tmp_path: Path, **changes) -> Path:
    data = yaml.safe_load((Path("configs/tasks/emoset.yaml")).read_text())
    data.update(changes)
    path = tmp_path / "task.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_every_shipped_task_loads():
    assert sorted(p.stem for p in Path("configs/tasks").glob("*.yaml")) == shipped_tasks() == \
        ["emoset", "facial_expression"]
    face = load_task("facial_expression")
    assert face.labels == FACES and face.label_from == "facial_expression"
    assert "Choose one of: angry, disgust, fear, happy, sad, surprise." in face.question("cot")
    assert load_task("configs/tasks/emoset.yaml").question("label") == load_task().question("label")


@pytest.mark.parametrize("changes, message", [
    ({"labls": ["a", "b"]}, "did you mean 'labels'"),
    ({"label_from": "colour"}, "label_from must be 'split' or one of"),
    ({"labels": ["awe"]}, "at least two labels"),
    ({"labels": ["awe", "Awe"]}, "labels must be distinct"),
    ({"questions": {"cot": "Which {label}?", "label": "x"}}, "unknown placeholder"),
    ({"questions": {"cot": "x"}}, "exactly 'cot' and 'label'"),
    ({"answer": {"aliases": {"scary": "terror"}}}, "not a label"),
    ({"answer": {"aliases": {"Awe": "fear"}}}, "already spells a label"),
    ({"teacher": {"keywords": {"joy": {"party": 1.0}}}}, "names labels the task does not have: ['joy']"),
    ({"teacher": {"scales": {"loudness": {"awe": 1.0}}}}, "unknown attributes ['loudness']"),
    ({"label_from": "object"}, "one value per image"),
    ({"labels": ["awe", "fear/terror"]}, "one of , /"),
    ({"labels": ["awe", "fear, terror"]}, "one of , /"),
    ({"questions": {"cot": None, "label": "x"}}, "unknown placeholder"),
])
def test_a_bad_task_file_is_a_one_line_error_naming_the_file(tmp_path, changes, message):
    path = _write(tmp_path, **changes)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(")) as e:
        load_task(str(path))
    assert str(path.resolve()) in str(e.value) and "\n" not in str(e.value)


def test_the_label_attribute_is_never_teacher_evidence(tmp_path):
    path = _write(tmp_path, label_from="facial_expression", labels=FACES,
                  teacher={"categories": {"facial_expression": {"happy": {"happy": 1.0}}}})
    with pytest.raises(ConfigError, match="cannot be evidence"):
        load_task(str(path))


def test_unknown_task_names_the_shipped_ones():
    with pytest.raises(ConfigError, match="shipped tasks: emoset, facial_expression"):
        load_task("scenes")
    with pytest.raises(ConfigError, match="task file not found"):
        load_task("nowhere/task.yaml")


def test_aliases_and_case_travel_in_the_manifest_and_an_older_reader_refuses_them():
    face = load_task("facial_expression").answer_format
    assert face.parse("<think>a smile</think><answer> Happiness</answer>").label == "happy"
    assert face.parse("<think>x</think><answer>scared</answer>").well_formed
    section = face.to_manifest()
    assert section["aliases"]["sadness"] == "sad" and "case_sensitive" not in section
    again = AnswerFormat.from_manifest({"labels": FACES, "answer": section})
    assert again == face and again.normalize_label("SURPRISED") == "surprise"
    # EmoSet's packages keep the three-key section every runtime reads
    assert set(load_task().answer_format.to_manifest()) == {"think", "answer", "rule"}
    strict = AnswerFormat(labels=("OK", "NG"), case_sensitive=True)
    assert strict.normalize_label("ok") is None and strict.normalize_label(" NG ") == "NG"
    assert AnswerFormat.from_manifest({"labels": ["OK", "NG"], "answer": strict.to_manifest()}) == strict
    # a reader that knows only think/answer/rule must refuse the section rather than misjudge answers
    with pytest.raises(ValueError, match="answer must be an object"):
        AnswerFormat.from_manifest({"labels": FACES, "answer": {**section, "stemming": True}})


def test_the_reader_labels_an_attribute_task_from_annotations(synth_root):
    from factory.data.emoset import read_split

    emo = read_split(synth_root, "train", check_images="none")
    face = read_split(synth_root, "train", task="facial_expression", check_images="none")  # strict: no error
    with_face = [r for r in emo.records if "facial_expression" in r.attributes]
    assert 0 < len(face.records) == len(with_face) < len(emo.records)
    assert face.unlabelled == len(emo.records) - len(with_face)
    assert all(r.label == r.attributes["facial_expression"] for r in face.records)
    assert all(r.label == r.emotion for r in emo.records)
    summary = face.summary()
    assert summary["task"] == "facial_expression" and set(summary["per_class"]) <= set(FACES)
    assert list(summary["per_class"]) == [f for f in FACES if f in summary["per_class"]]  # the task's order


def test_an_attribute_value_outside_the_task_is_a_bad_entry(tmp_path, synth_root):
    import shutil

    from factory.data.emoset import read_split
    from factory.errors import DataError

    root = tmp_path / "d"
    shutil.copytree(synth_root, root)
    entry = next(e for e in json.loads((root / "val.json").read_text())
                 if "facial_expression" in json.loads((root / e[3]).read_text()))
    ann = json.loads((root / entry[3]).read_text())
    (root / entry[3]).write_text(json.dumps({**ann, "facial_expression": "smug"}))
    with pytest.raises(DataError, match="unknown_label: facial_expression 'smug'"):
        read_split(root, "val", task="facial_expression", check_images="none")
    lenient = read_split(root, "val", task="facial_expression", strict=False, check_images="none")
    assert [s.kind for s in lenient.skipped] == ["unknown_label"]


def test_the_attribute_teacher_answers_the_task_without_seeing_its_label(synth_root):
    from factory.cot.attributes import attribute_response
    from factory.data.emoset import read_split

    face = load_task("facial_expression")
    rec = read_split(synth_root, "train", task=face, check_images="none").records[0]
    answers = {attribute_response({**rec.attributes, "facial_expression": x}, task=face) for x in FACES}
    assert len(answers) == 1  # the label attribute changes nothing
    parsed = face.parse(answers.pop())
    assert parsed.well_formed and parsed.label in FACES
    assert "expression" not in parsed.think  # the face is not cited as evidence
    hinted = face.parse(attribute_response(rec.attributes, hint="disgust", task=face))
    assert hinted.label == "disgust"


def test_built_in_rewards_judge_the_bound_task():
    from factory.rewards import get_rewards

    fmt, acc = get_rewards(["format", "accuracy"], load_task("facial_expression"))
    assert (fmt.__name__, acc.__name__) == ("format_reward", "accuracy_reward")  # trl logs by name
    done = ["<think>a smile</think><answer>Happiness</answer>", "<think>x</think><answer>awe</answer>"]
    assert fmt(completions=done) == [1.0, 0.0]  # an alias of happy; awe is EmoSet's, not a facial expression
    assert acc(completions=done, label=["happy", "happy"]) == [1.0, 0.0]
    emo_fmt, = get_rewards(["format"])
    assert emo_fmt(completions=done) == [0.0, 1.0]


def test_imports_take_the_task_labels_and_its_aliases(tmp_path):
    import numpy as np
    from PIL import Image

    from factory.data.emoset import read_split
    from factory.data.sources import ImportConfig, import_dataset

    src = tmp_path / "faces"
    rng = np.random.default_rng(0)
    for folder in ("Happiness", "sad", "Surprised", "angry"):  # two are aliases of the task's labels
        (src / folder).mkdir(parents=True)
        for k in range(10):
            Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(src / folder / f"{k}.png")
    report = import_dataset(ImportConfig(path=str(src), out=str(tmp_path / "out"), task="facial_expression"))
    assert report["task"] == "facial_expression"
    assert set(report["splits"]["train"]) == {"happy", "sad", "surprise", "angry"}
    records = read_split(tmp_path / "out", "train", task="facial_expression").records
    assert {r.label for r in records} == {"happy", "sad", "surprise", "angry"}
    from factory.errors import DataError

    with pytest.raises(DataError, match="imported for task 'facial_expression'"):  # not cut to shared classes
        read_split(tmp_path / "out", "train", strict=False)
    with pytest.raises(Exception, match="not one of"):  # EmoSet's emotions do not include "angry"
        import_dataset(ImportConfig(path=str(src), out=str(tmp_path / "emo")))


@pytest.mark.slow
def test_svlm_run_trains_exports_and_scores_the_second_task(tmp_path, capsys):
    """The whole chain on facial_expression with the family's real tokenizer (``<answer>`` is three tokens; the
    aliases and labels are scored as real token sequences): every step must carry the task (EmoSet's labels
    anywhere fail)."""
    from PIL import Image

    from factory.cli import main
    from svlm_runtime.package import Package

    argv = ["run", "--output-dir", str(tmp_path), "--name", "faces", "task=facial_expression", "model.tokenizer=real", "model.size=tiny",
            "data.synth.n=160", "data.synth.image_size=48", "data.synth.face_prob=0.9", "eval.limit=6",
            "eval.max_new_tokens=8", "train.stages.0_baseline.max_steps=2", "train.stages.1_sft.max_steps=2",
            *short_grpo("2_grpo_format", 1), *short_grpo("3_grpo_accuracy", 1), *short_grpo("4_clgrpo", 1),
            "heldout.n=160", "heldout.limit=8", "export.quant=[fp32,int8]", "bench.limit=4",
            "bench.latency_runs=1", "bench.latency_warmup=0", "bench.latency_images=1"]
    assert main(argv) == 0
    run = tmp_path / "faces"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["task"] == "facial_expression"
    train = summary["splits"]["train"]
    assert set(train["per_class"]) <= set(FACES) and train["unlabelled"] > 0  # faceless images are not in it

    cot = json.loads((run / "cot" / "summary.json").read_text())
    assert list(cot["per_class"]) == FACES and cot["traces"] > 0
    for line in (run / "cot" / "cot.jsonl").read_text().splitlines():
        row = json.loads(line)
        assert load_task("facial_expression").parse(row["response"]).label == row["label"] in FACES

    for stage in ("0_baseline", "1_sft", "2_grpo_format", "3_grpo_accuracy", "4_clgrpo"):
        assert load_task(str(run / stage / "task.yaml")).labels == FACES
        preds = [json.loads(x) for x in (run / stage / "predictions.jsonl").read_text().splitlines()]
        assert preds and {p["label"] for p in preds} <= set(FACES)
        card = yaml.safe_load((run / stage / "adapter" / "README.md").read_text().split("---")[1])
        assert card["labels"] == FACES and "facial-expression-recognition" in card["tags"]
    history = json.loads((run / "3_grpo_accuracy" / "log_history.json").read_text())
    by_class = {k.removeprefix("rewards/accuracy_by_class/") for row in history for k in row
                if k.startswith("rewards/accuracy_by_class/")}
    assert by_class and by_class <= set(FACES)  # the reward's per-class curves are the task's classes

    assert set(summary["heldout"]["stages"]["4_clgrpo"]["recall"]) == set(FACES)
    bench = json.loads((run / "bench" / "accuracy.json").read_text())
    assert bench["task"] == "facial_expression" and bench["labels"] == FACES

    manifest = json.loads((run / "export" / "fp32" / "manifest.json").read_text())
    assert manifest["labels"] == FACES and manifest["answer"]["aliases"]["happiness"] == "happy"
    assert manifest["prompt"]["question"] == load_task("facial_expression").question("cot")
    assert summary["export"]["fp32"]["greedy_tokens_identical"] == 1.0
    pkg = Package(run / "export" / "fp32")
    assert pkg.answer_format.parse("<think>x</think><answer>Scared</answer>").label == "fear"
    image = Image.open(next((run / "data" / "image").rglob("*.jpg"))).convert("RGB")
    gen = pkg.generate(image, max_new_tokens=8)
    assert set(gen.label_probs) == set(FACES) and abs(sum(gen.label_probs.values()) - 1) < 1e-6
    assert load_task(str(run / "export" / "merged" / "task.yaml")).name == "facial_expression"


def test_the_demo_reads_each_variants_labels_without_loading_it(tmp_path):
    from demo.app import model_labels
    from factory.tasks import save_task

    stage = tmp_path / "runs" / "r" / "1_sft"
    (stage / "adapter").mkdir(parents=True)
    assert model_labels(stage) == tuple(load_task().labels)  # a stage from before tasks: EmoSet's
    save_task(load_task("facial_expression"), stage)
    assert model_labels(stage) == tuple(FACES)
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "svlm_manifest.json").write_text(json.dumps({"labels": ["ok", "ng"]}))  # a GenAI package
    assert model_labels(pkg) == ("ok", "ng") and model_labels(tmp_path) == ()


def test_a_task_labelled_from_the_scene_never_hears_the_scene(tmp_path):
    from factory.cot.attributes import attribute_response

    path = _write(tmp_path, name="scenes", labels=["beach", "cemetery"], label_from="scene",
                  teacher={"keywords": {"beach": {"surf": 1.0, "beach": 1.0}, "cemetery": {"candle": 1.0}}})
    task = load_task(str(path))
    text = attribute_response({"scene": "beach", "object": ["Candle"], "brightness": 0.5}, task=task)
    assert "scene" not in text and task.parse(text).label == "cemetery"  # from the candle, not the answer


def test_the_attribute_teacher_refuses_a_task_without_a_lexicon(tmp_path):
    from factory.cot.teachers import TeacherConfig, make_teacher
    from factory.tasks import new_task

    path = new_task("defects", ["scratch", "dent"], "defect", tmp_path)
    with pytest.raises(ConfigError, match="no attribute lexicon"):
        make_teacher(TeacherConfig(), str(path))


def test_sft_rows_refuse_traces_built_for_another_task(tmp_path):
    from factory.cot.datasets import sft_rows
    from factory.errors import SVLMError

    (tmp_path / "cot.jsonl").write_text(json.dumps({
        "image_id": "a", "label": "amusement", "image": "x.jpg", "teacher": "t", "response":
        "<think>x</think><answer>amusement</answer>", "rationalized": False}) + "\n")
    assert len(sft_rows(tmp_path)) == 1
    with pytest.raises(SVLMError, match="built for another task"):
        sft_rows(tmp_path, task=load_task("facial_expression"))


def test_an_imported_reward_with_a_task_parameter_judges_the_run_task():
    from factory.rewards import get_rewards

    fmt, = get_rewards(["factory.rewards:format_reward"], load_task("facial_expression"))
    assert fmt(completions=["<think>x</think><answer>Happiness</answer>"]) == [1.0]


def test_export_takes_a_task_for_a_checkpoint_without_one():
    from export.build import source_task

    assert source_task({"model": "org/name"}).name == "emoset"
    assert source_task({"model": "org/name", "task": "facial_expression"}).labels == FACES


def test_svlm_tasks_lists_and_writes_a_loadable_task(tmp_path, monkeypatch, capsys):
    from factory.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["tasks", "--new", "defects", "--labels", "scratch, dent,clean", "--noun", "defect"]) == 0
    task = load_task("defects")  # found in ./configs/tasks by name
    assert task.labels == ["scratch", "dent", "clean"] and "Which defect does" in task.question("cot")
    assert main(["tasks"]) == 0
    listed = capsys.readouterr().out
    assert "defects: 3 labels" in listed and "facial_expression: 6 labels" in listed
    assert main(["tasks", "--new", "defects", "--labels", "a,b"]) == 2  # never replaces a task file
    assert "exists" in capsys.readouterr().err and load_task("defects").labels == task.labels
