"""benchmarks/stages_gpu.py stays runnable: a CPU dry run (slow) and the real check on CUDA (gpu)."""

import json

import pytest
import torch


@pytest.mark.slow
def test_stages_gpu_script_runs_on_cpu_with_a_tiny_model(tmp_path, capsys):
    from benchmarks.stages_gpu import main

    assert main(["--shape", "tiny", "--sft-steps", "2", "--grpo-steps", "2", "--completion", "8",
                 "--workdir", str(tmp_path / "work"), "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "stages_gpu_cpu_dryrun.json").read_text())
    assert [r["stage"] for r in result["rows"]] == ["1_sft", "4_clgrpo"]
    assert result["rows"][1]["num_iterations"] == 2
    assert "4_clgrpo" in capsys.readouterr().out.splitlines()[-2]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_stages_fit_a_24gb_gpu_on_a_1b_shape(tmp_path):
    from benchmarks.stages_gpu import main

    assert main(["--workdir", str(tmp_path / "work"), "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "stages_gpu.json").read_text())["rows"]
    assert all(r["peak_gib"] < 24 for r in rows)
