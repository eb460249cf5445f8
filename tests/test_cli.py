"""The ``svlm`` command: help everywhere, synth → check, tiny models, the main job, clean errors."""

import json
import shutil
import subprocess

import pytest
import yaml

from factory.cli import build_parser, main

SUBCOMMANDS = [[], ["data"], ["data", "synth"], ["data", "check"], ["model"], ["model", "tiny"],
               ["model", "list"], ["run"]]


@pytest.mark.parametrize("words", SUBCOMMANDS)
def test_help_on_every_subcommand(words, capsys):
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(words + ["--help"])
    assert info.value.code == 0
    assert "usage: svlm" in capsys.readouterr().out


def test_console_script_is_installed():
    """The ``svlm`` executable that ``pip install`` puts on PATH (not ``python -m factory.cli``)."""
    exe = shutil.which("svlm")
    assert exe is not None, "the svlm console script is not on PATH: pip install -e ."
    out = subprocess.run([exe, "model", "list"], capture_output=True, text=True, check=True).stdout
    assert "internvl (default)" in out and "smolvlm" in out and "qwen2vl" in out


def test_synth_then_check_agree(tmp_path, capsys):
    out = tmp_path / "d"
    assert main(["data", "synth", "--out", str(out), "--n", "24", "--image-size", "32", "-q", "seed=5"]) == 0
    assert yaml.safe_load((out / "svlm_config.yaml").read_text())["seed"] == 5
    assert main(["data", "check", "--data", str(out), "-q", "--report", str(tmp_path / "reports")]) == 0
    text = capsys.readouterr().out
    # 24 images = 3 per class: rounding gives val and test 0 per class, train all 3.
    assert "train: 24 records" in text and "val: 0 records" in text
    report = json.loads((tmp_path / "reports" / "train.json").read_text())
    assert report["records"] == 24 and report["skipped"] == 0


def test_check_fails_cleanly_in_strict_mode(tmp_path, capsys):
    out = tmp_path / "d"
    main(["data", "synth", "--out", str(out), "--n", "16", "--image-size", "32", "-q"])
    first = json.loads((out / "train.json").read_text())[0]
    (out / first[2]).unlink()
    assert main(["data", "check", "--data", str(out), "--split", "train", "-q"]) == 2
    err = capsys.readouterr().err
    assert "missing_image" in err and "Traceback" not in err
    assert main(["data", "check", "--data", str(out), "--split", "train", "--lenient", "-q"]) == 0


@pytest.mark.parametrize("argv,message", [
    (["data", "synth", "--n", "2"], "at least 8"),
    (["data", "synth", "bogus=1"], "unknown config key 'bogus'"),
    (["data", "check", "--data", "/nonexistent/emoset"], "data root not found"),
    (["run", "model.family=llava"], "not registered"),
    (["run", "--config", "/nonexistent.yaml"], "config file not found"),
])
def test_bad_input_exits_2_with_one_line(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.startswith("svlm: error:")


def test_model_tiny_refuses_non_empty_folder(tmp_path, capsys):
    (tmp_path / "keep.txt").write_text("x")
    assert main(["model", "tiny", "--out", str(tmp_path)]) == 2
    assert (tmp_path / "keep.txt").read_text() == "x"


def test_model_tiny_loads_through_auto_classes(tmp_path, capsys):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    assert main(["model", "tiny", "--family", "smolvlm", "--out", str(tmp_path / "m")]) == 0
    model = AutoModelForImageTextToText.from_pretrained(tmp_path / "m")
    processor = AutoProcessor.from_pretrained(tmp_path / "m")
    assert type(model).__name__ == "SmolVLMForConditionalGeneration"
    assert type(processor).__name__ == "SmolVLMProcessor"
    # the default is the real tokenizer: SmolVLM-256M's 49,280 tokens, and its vocabulary in the model
    assert len(processor.tokenizer) == model.config.text_config.vocab_size == 49280
    assert "real tokenizer (49280 tokens" in capsys.readouterr().out
    assert main(["model", "tiny", "--family", "smolvlm", "--tokenizer", "small", "--out", str(tmp_path / "s")]) == 0
    assert len(AutoProcessor.from_pretrained(tmp_path / "s").tokenizer) < 2000
    with pytest.raises(SystemExit):  # argparse: an invalid choice
        main(["model", "tiny", "--tokenizer", "big", "--out", str(tmp_path / "b")])
    assert "invalid choice" in capsys.readouterr().err


def test_run_on_a_tiny_setting_writes_summary_and_config(tmp_path, capsys):
    argv = ["run", "--output-dir", str(tmp_path), "--name", "t", "model.size=tiny", "data.synth.n=80",
            "data.synth.image_size=32", "eval.limit=4", "eval.max_new_tokens=4", "train.select=1-2",
            "train.stages.1_sft.max_steps=2", "train.stages.2_grpo_format.max_steps=1",
            "train.stages.2_grpo_format.max_completion_length=4", "bench.limit=4", "bench.latency_runs=1",
            "bench.latency_warmup=0", "bench.latency_images=1"]
    assert main(argv) == 0
    run_dir = tmp_path / "t"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["splits"]["train"]["records"] == 64
    assert [row["stage"] for row in summary["stages"]] == ["base (untrained)", "1_sft", "2_grpo_format"]
    assert all(row["n"] == 4 for row in summary["stages"])
    assert (run_dir / "stages.png").is_file() and (run_dir / "2_grpo_format" / "adapter").is_dir()
    assert set(summary["export"]) == {"fp32", "int8", "int4"}
    assert summary["export"]["fp32"]["max_abs_logit_diff"] <= 1e-4
    assert json.loads((run_dir / "export" / "int8" / "manifest.json").read_text())["source"]["stage"] == \
        "2_grpo_format"
    saved = yaml.safe_load((run_dir / "svlm_config.yaml").read_text())
    assert saved["model"]["size"] == "tiny" and saved["data"]["synth"]["out"] == str(run_dir / "data")
    printed = capsys.readouterr().out
    assert "stage" in printed
    assert f"svlm demo --runs {tmp_path} --model {run_dir / 'export' / 'int8'}" in printed
    assert (run_dir / "bench" / "accuracy.md").is_file() and (run_dir / "bench" / "latency.md").is_file()
    # Rerunning reuses the data and the model instead of rebuilding them.
    weights = run_dir / "base_model" / "model.safetensors"
    mtime = weights.stat().st_mtime_ns
    report = (run_dir / "bench" / "accuracy.json").stat().st_mtime_ns
    assert main(argv) == 0
    assert weights.stat().st_mtime_ns == mtime
    assert (run_dir / "bench" / "accuracy.json").stat().st_mtime_ns == report  # the bench step is reused too
