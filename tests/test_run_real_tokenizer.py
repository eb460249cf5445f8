"""``svlm run`` with the family's real tokenizer (``model.tokenizer=real``), the whole chain on a reduced setting.

``svlm run`` keeps the small 4k-token tokenizer by default: with the real 151k-token head its CPU-sized model
trains ~10x slower, past the run's 15-minute budget (README, "Tokenizers"). This test runs the same chain with
the real tokenizer — synthetic data, CoT data, base model, the baseline and all four stages, the held-out
report, the ONNX export, the benchmark step — with a few steps and images, so that a break anywhere on the
real-tokenizer path of ``svlm run`` shows. Opt-in (``-m slow``): minutes on a 2-core CPU.
"""

from __future__ import annotations

import json

import pytest

from factory.prompts import EMOTIONS
from run_args import short_grpo

STAGES = ["0_baseline", "1_sft", "2_grpo_format", "3_grpo_accuracy", "4_clgrpo"]


@pytest.mark.slow
def test_svlm_run_finishes_with_the_real_tokenizer(tmp_path, capsys):
    from PIL import Image
    from transformers import AutoTokenizer

    from svlm_runtime.package import Package
    from factory.cli import main
    from factory.families import get_family

    argv = ["run", "--output-dir", str(tmp_path), "--name", "real", "model.tokenizer=real", "model.size=tiny",
            "data.synth.n=80", "data.synth.image_size=48", "eval.limit=4", "eval.max_new_tokens=8",
            "train.stages.0_baseline.max_steps=2", "train.stages.1_sft.max_steps=2",
            *short_grpo("2_grpo_format", 1), *short_grpo("3_grpo_accuracy", 1), *short_grpo("4_clgrpo", 2),
            "heldout.n=16", "bench.limit=4", "bench.latency_runs=1", "bench.latency_warmup=0",
            "bench.latency_images=1"]
    assert main(argv) == 0
    run_dir = tmp_path / "real"
    printed = capsys.readouterr().out

    # the base model carries the family's real tokenizer (151k tokens, <IMG_CONTEXT> = 151667)
    tok = AutoTokenizer.from_pretrained(run_dir / "base_model")
    fam = get_family("internvl")
    assert len(tok) > 150_000 and fam.image_token_id(tok) == 151667

    summary = json.loads((run_dir / "summary.json").read_text())
    assert [r["stage"] for r in summary["stages"]] == ["base (untrained)", *STAGES]
    assert all(r["n"] == 4 for r in summary["stages"])
    for stage in STAGES:  # every stage's report
        done = json.loads((run_dir / stage / "done.json").read_text())
        assert set(done["eval"]) >= {"accuracy", "format_rate", "truncation_rate"}
        assert (run_dir / stage / "eval.json").is_file() and (run_dir / stage / "adapter").is_dir()
    assert (run_dir / "stages.png").is_file() and "4_clgrpo" in printed

    held = summary["heldout"]
    assert held["images"] == 16 and set(held["stages"]) == set(STAGES)
    for stage in held["stages"].values():
        assert 0 <= stage["accuracy"] <= 1 and len(stage["accuracy_ci"]) == 2 and set(stage["recall"]) == set(EMOTIONS)
    assert "Held-out test set (16 images" in printed

    assert set(summary["export"]) == {"fp32", "int8", "int4"}
    assert summary["export"]["fp32"]["max_abs_logit_diff"] <= 1e-4
    assert summary["export"]["fp32"]["greedy_tokens_identical"] == 1.0
    manifest = json.loads((run_dir / "export" / "fp32" / "manifest.json").read_text())
    assert manifest["source"]["stage"] == "4_clgrpo"
    assert manifest["tokens"]["image_token_id"] == 151667 and 151645 in manifest["tokens"]["eos_token_ids"]
    assert summary["bench"]["accuracy"] and (run_dir / "bench" / "latency.md").is_file()

    # the exported runtime scores every label after the model's answer (forced when it gave none)
    image = Image.open(next((run_dir / "data" / "image").rglob("*.jpg"))).convert("RGB")
    for quant in ("fp32", "int4"):
        gen = Package(run_dir / "export" / quant).generate(image, max_new_tokens=16)
        assert set(gen.label_probs) == set(EMOTIONS) and abs(sum(gen.label_probs.values()) - 1) < 1e-6
        assert gen.label_probs_forced == (gen.label is None)
