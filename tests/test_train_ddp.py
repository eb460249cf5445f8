"""Training runs unchanged under ``accelerate launch`` with several processes (DDP; gloo on CPU)."""

import json
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_stage1_under_accelerate_launch_with_two_cpu_processes(tmp_path, synth_root, cot_dir, tiny_dirs):
    steps, batch = 2, 2
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "-m", "factory.cli", "train", "--stages", "1", "--output-dir", str(tmp_path), "--name", "ddp",
           "--data", str(synth_root), "--cot", str(cot_dir), "-q", f"model.source={tiny_dirs('internvl')}",
           f"train.stages.1_sft.max_steps={steps}", f"train.stages.1_sft.batch_size={batch}",
           "train.stages.1_sft.grad_accum=1", "train.lora.r=4", "eval.limit=4", "eval.max_new_tokens=4"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "ddp" / "1_sft"
    assert (out / "done.json").is_file() and (out / "adapter" / "adapter_config.json").is_file()
    # Two processes consume 2 x batch rows per optimizer step: the epoch counter proves the data was sharded.
    rows = len((cot_dir / "cot.jsonl").read_text().splitlines())
    epoch = json.loads((out / "log_history.json").read_text())[-1]["epoch"]
    assert epoch == pytest.approx(steps * batch * 2 / rows, rel=0.05)
    assert proc.stdout.count("1_sft: format") == 1  # evaluated once, on rank 0
