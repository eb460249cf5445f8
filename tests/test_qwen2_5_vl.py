"""The Qwen2.5-VL family (issue 17): its real files are the derivations PROVENANCE.md states, its tiny tower
has window and full attention like the real one, and ``svlm train`` runs an SFT and a GRPO stage on it.

The family's other paths (Auto-class round trip, real tokenizer facts, 4-bit, SFT loss masking, a GRPO step,
evaluation, label scoring) run in the per-family tests of test_families.py, test_real_tokenizer.py and
test_answer_probs.py, which cover every registered family."""

from __future__ import annotations

import json

import pytest

from factory import assets
from factory.families import get_family


def test_real_files_are_the_qwen25_tokenizer_and_the_qwen2vl_template_and_image_settings():
    fam = get_family("qwen2_5_vl")
    name = fam.real.assets
    assert assets.tokenizer_json(name) == assets.tokenizer_json("qwen2.5-instruct")
    ours, text = assets.read_json(name, "tokenizer_config.json"), assets.read_json("qwen2.5-instruct",
                                                                                   "tokenizer_config.json")
    template = assets.read_json(name, "chat_template.json")["chat_template"]
    assert template == assets.read_json("qwen2-vl-2b-instruct", "chat_template.json")["chat_template"]
    assert ours == {**text, "chat_template": template}
    image = assets.read_json(name, "preprocessor_config.json")
    assert image == {**assets.read_json("qwen2-vl-2b-instruct", "preprocessor_config.json"),
                     "processor_class": "Qwen2_5_VLProcessor"}
    assert (image["min_pixels"], image["max_pixels"], image["patch_size"], image["merge_size"]) == \
        (3136, 12845056, 14, 2)


def test_tiny_tower_has_window_and_full_attention_blocks(tiny_dirs):
    from transformers import AutoConfig, AutoProcessor

    config = AutoConfig.from_pretrained(tiny_dirs("qwen2_5_vl"))
    vision = config.vision_config
    assert config.model_type == "qwen2_5_vl"
    # the real checkpoint's 112-pixel windows at its 14-pixel patches; the last block attends fully, the
    # others in windows
    assert vision.window_size == 112 and vision.patch_size == 14
    assert list(vision.fullatt_block_indexes) == [vision.depth - 1] and vision.depth >= 2
    assert vision.out_hidden_size == config.text_config.hidden_size
    processor = AutoProcessor.from_pretrained(tiny_dirs("qwen2_5_vl"))
    assert type(processor).__name__ == "Qwen2_5_VLProcessor"
    assert processor.image_processor.size.longest_edge == 12845056  # the real setting; the policy caps it


@pytest.mark.slow  # ~25 s; the default suite runs an SFT loss and a GRPO step per family (test_real_tokenizer.py)
def test_svlm_train_runs_sft_and_grpo_stages(tmp_path, synth_root, cot_dir, small_tiny_dirs, capsys):
    """``svlm train`` stages 1 (SFT) and 2 (GRPO) on a tiny Qwen2.5-VL: each trains its adapter on the
    language model's projections and is evaluated."""
    from safetensors.numpy import load_file

    from factory.cli import main

    argv = ["train", "--stages", "1,2", "--output-dir", str(tmp_path), "--name", "q", "--data", str(synth_root),
            "--cot", str(cot_dir), "-q", f"model.source={small_tiny_dirs('qwen2_5_vl')}", "train.lora.r=4",
            "train.stages.1_sft.max_steps=1", "train.stages.1_sft.batch_size=2",
            "train.stages.2_grpo_format.max_steps=1", "train.stages.2_grpo_format.batch_size=2",
            "train.stages.2_grpo_format.num_generations=2", "train.stages.2_grpo_format.max_completion_length=6",
            "eval.limit=2", "eval.max_new_tokens=4"]
    assert main(argv) == 0
    for stage in ("1_sft", "2_grpo_format"):
        run = tmp_path / "q" / stage
        assert json.loads((run / "done.json").read_text())["eval"]["n"] == 2
        weights = load_file(str(run / "adapter" / "adapter_model.safetensors"))
        assert weights and all("language_model" in k for k in weights)
        assert not any("visual" in k for k in weights)
