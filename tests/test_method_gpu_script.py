"""benchmarks/method_gpu.py stays runnable: a CPU dry run (slow) and the real check on CUDA (gpu)."""

import json

import pytest
import torch


@pytest.mark.slow
def test_method_gpu_script_runs_on_cpu_with_a_tiny_model(tmp_path, capsys):
    from benchmarks.method_gpu import main

    # the small tokenizer: the path is the same, and a 151k-token head made this dry run 4x slower on 2 cores
    assert main(["--shape", "tiny", "--tokenizer", "small", "--sft-steps", "2", "--grpo-steps", "2", "--completion",
                 "8", "--fidelity-tokens", "8", "--workdir", str(tmp_path / "work"), "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "method_gpu_cpu_dryrun.json").read_text())
    fidelity = result["sampler_fidelity"]
    # on a CPU the copy is fp32 like the dequantized policy: the gap is rounding only
    assert fidelity["tokens"] == 2 * 8 * 8 and fidelity["abs_dlogp_max"] < 1e-3
    stages = result["stages"]
    assert stages["1_sft"]["trainable_dtypes"] == ["torch.float32"] == stages["4_clgrpo"]["trainable_dtypes"]
    assert stages["4_clgrpo"]["num_iterations"] == 2 and stages["4_clgrpo"]["epsilon"] == 0.1
    assert "4_clgrpo" in capsys.readouterr().out.splitlines()[-2]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_bf16_sampler_stays_close_to_the_nf4_policy_and_the_clip_acts(tmp_path):
    from benchmarks.method_gpu import main

    assert main(["--workdir", str(tmp_path / "work"), "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "method_gpu.json").read_text())
    assert result["sampler_fidelity"]["kl_mean"] < 0.05
    assert result["stages"]["4_clgrpo"]["trainable_dtypes"] == ["torch.float32"]
    assert all(r["peak_gib"] < 24 for r in result["stages"].values())
