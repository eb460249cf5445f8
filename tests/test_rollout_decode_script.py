"""benchmarks/rollout_decode.py stays runnable (a CPU run with the tiny shape); its figures come from a GPU."""

import json

import pytest


def test_rollout_decode_runs_both_decoders_to_full_length(tmp_path):
    from benchmarks.rollout_decode import main

    assert main(["--shape", "tiny", "--tokenizer", "small", "--batch", "3", "--tokens", "5", "--repeats", "1",
                 "--threads", "1", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "rollout_decode_cpu.json").read_text())
    rows = result["decoders"]
    # min_new_tokens: every row decodes all 5 tokens in both, so their tokens/s compare the same work
    assert rows["generate"]["tokens"] == rows["fused"]["tokens"] == 15
    assert result["fused_vs_generate"] == pytest.approx(
        rows["fused"]["tokens_per_s"] / rows["generate"]["tokens_per_s"], abs=0.01)
    # on a CPU the step runs eagerly: no graph; the draws still differ from call to call
    assert rows["fused"]["compiled_graphs"] == 0 and rows["fused"]["sampled_calls_differ"] is True


def test_bad_sizes_are_refused(tmp_path):
    from benchmarks.rollout_decode import main

    with pytest.raises(SystemExit, match="--tokens"):
        main(["--tokens", "1", "--out", str(tmp_path)])
