"""benchmarks/train_gpu.py stays runnable: a CPU dry run with tiny shapes (slow) and the real check (gpu)."""

import json

import pytest
import torch


@pytest.mark.slow
def test_train_gpu_script_dry_run_on_cpu(tmp_path):
    from benchmarks.train_gpu import main

    assert main(["--compare-shape", "tiny", "--memory-shape", "tiny", "--completion", "8",
                 "--workdir", str(tmp_path / "w"), "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "train_gpu_cpu_dryrun.json").read_text())["rows"]
    assert [r.get("rollout") for r in rows] == ["trl", "dense", None, "dense"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_dense_rollouts_are_5x_faster_and_2b_fits_12_gib(tmp_path):
    from benchmarks.train_gpu import main

    assert main(["--workdir", str(tmp_path / "w"), "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "train_gpu.json").read_text())
    assert result["speedup_generation_step"] >= 5
    assert all(r["peak_gib"] <= 12 for r in result["rows"] if r["shape"].startswith("internvl3-2b"))
