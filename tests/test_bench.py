"""Benchmarks: metrics agree with scikit-learn on fixed predictions; accuracy and latency run on a tiny export
and write reports that parse."""

import json
import sys

import pytest

from benchmarks.accuracy import metrics
from factory.prompts import EMOTIONS


def test_metrics_on_fixed_predictions():
    from sklearn.metrics import f1_score, precision_score, recall_score

    y_true = ["awe", "awe", "fear", "fear", "anger", "sadness", "sadness", "sadness"]
    y_pred = ["awe", "fear", "fear", None, "anger", "sadness", "awe", "sadness"]
    well = [True, True, False, False, True, True, True, True]
    m = metrics(y_true, y_pred, well, list(EMOTIONS))
    assert m["n"] == 8 and m["accuracy"] == 5 / 8
    assert m["format_rate"] == 6 / 8 and m["unparsable_rate"] == 1 / 8
    filled = [p or "<unparsable>" for p in y_pred]
    labels = list(EMOTIONS)
    recall = recall_score(y_true, filled, labels=labels, average=None, zero_division=0)
    precision = precision_score(y_true, filled, labels=labels, average=None, zero_division=0)
    f1 = f1_score(y_true, filled, labels=labels, average=None, zero_division=0)
    for i, lab in enumerate(labels):
        assert m["per_class"][lab]["recall"] == pytest.approx(recall[i])
        assert m["per_class"][lab]["precision"] == pytest.approx(precision[i])
        assert m["per_class"][lab]["f1-score"] == pytest.approx(f1[i])
    # macro recall averages over all 8 labels; a label absent from y_true scores 0 (zero_division=0)
    assert m["macro_recall"] == pytest.approx(recall.mean())
    cm = m["confusion"]
    assert len(cm) == 9 and all(len(row) == 9 for row in cm)
    assert cm[labels.index("fear")][8] == 1  # the unparsable answer sits in the last column
    assert sum(map(sum, cm)) == 8 and cm[labels.index("awe")][labels.index("fear")] == 1


def test_accuracy_and_latency_reports_on_a_tiny_export(exported, baseline_run, synth_root, tmp_path):
    from benchmarks import accuracy, latency

    out_dir, _ = exported
    models = [str(baseline_run / "0_baseline"), str(out_dir / "int8")]
    acc = accuracy.run(models, str(synth_root), "test", limit=6, out=tmp_path, max_new_tokens=12, progress=False)
    assert [r["kind"] for r in acc["models"]] == ["pytorch", "onnx"]
    assert all(r["n"] == 6 for r in acc["models"])
    onnx_row = acc["models"][1]
    assert 0.0 <= onnx_row["label_agreement_with_pytorch"] <= 1.0
    print(f"int8 vs PyTorch label agreement on 6 test images: {onnx_row['label_agreement_with_pytorch']:.0%}")
    assert onnx_row["label_agreement_with_pytorch"] >= 4 / 6
    images = latency.sample_images(synth_root, "test", 2)
    lat = latency.run(models, images, tmp_path, runs=2, warmup=1, max_new_tokens=8)
    for row in lat["models"]:
        assert row["e2e_s"]["p50"] > 0 and row["peak_rss_mb"] > 0 and row["size_mb"] > 0
        assert row["ttft_s"]["p95"] >= row["ttft_s"]["p50"]
    for name in ("accuracy.json", "latency.json"):
        json.loads((tmp_path / name).read_text())
    for name in ("accuracy.md", "latency.md", "per_class_recall.png", "accuracy_by_model.png",
                 "latency_vs_accuracy.png"):
        assert (tmp_path / name).stat().st_size > 0
    assert len(list(tmp_path.glob("confusion_*.png"))) == 2
    assert "| 0_baseline onnx-int8 |" in (tmp_path / "accuracy.md").read_text()


def test_cli_bench_latency_times_each_model_in_its_own_process(exported, baseline_run, synth_root, tmp_path,
                                                              monkeypatch, capsys):
    """`svlm bench latency` from the command line: one child process per model (``--one SPEC``), none of the
    timing in the calling process, and the report written and printed."""
    import subprocess

    from benchmarks import latency
    from factory.cli import main

    out_dir, _ = exported
    models = [str(out_dir / "int8"), str(out_dir / "int4")]
    launched = []
    real_run = subprocess.run

    def spy(cmd, *args, **kw):
        launched.append(list(cmd))
        return real_run(cmd, *args, **kw)

    def not_here(*args, **kw):
        raise AssertionError("a model was timed in the calling process")

    monkeypatch.setattr(latency.subprocess, "run", spy)
    monkeypatch.setattr(latency, "measure_one", not_here)
    assert main(["bench", "latency", "--models", *models, "--data", str(synth_root), "--images", "1", "--runs", "1",
                 "--warmup", "0", "--max-new-tokens", "4", "--threads", "1", "--out", str(tmp_path)]) == 0
    assert [cmd[cmd.index("--one") + 1] for cmd in launched] == models  # one process each, in order
    assert all(cmd[:3] == [sys.executable, "-m", "benchmarks.latency"] for cmd in launched)
    report = json.loads((tmp_path / "latency.json").read_text())
    assert [row["e2e_s"]["p50"] > 0 for row in report["models"]] == [True, True]
    rss = [row["peak_rss_mb"] for row in report["models"]]
    assert all(0 < r < latency.peak_rss_mb() for r in rss)  # a fresh process's peak, not this test session's
    printed = capsys.readouterr().out
    assert "latency.md" in printed and (tmp_path / "latency.md").read_text().strip()


def test_bench_cli_rejects_what_is_not_a_model(tmp_path, synth_root, capsys):
    from factory.cli import main

    assert main(["bench", "accuracy", "--models", str(tmp_path), "--data", str(synth_root), "-q"]) == 2
    err = capsys.readouterr().err
    assert "is neither a package (svlm ONNX, GGUF or ONNX Runtime GenAI)" in err and "checkpoint" in err
