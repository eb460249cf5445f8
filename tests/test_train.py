"""The stage runners on a tiny model: every stage trains its adapter and leaves the base alone, stages
continue their parent's adapter, a killed stage resumes, and settings that cannot work are refused.

These are tests of training mechanics, so they use the small-tokenizer tiny model (``small_tiny_dirs``);
training on each family's real tokenizer is tested in ``test_real_tokenizer.py``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

import pytest
import torch

from factory import config as config_lib
from factory.errors import ConfigError
from factory.prompts import EMOTIONS
from factory.train import common, grpo, sft
from factory.train.runner import TrainConfig, plan, train
from factory.train.stages import STAGE_ORDER, STAGES, StageConfig, resolve_stage, select_stages

GRPO_TINY = {"batch_size": 4, "num_generations": 2, "max_completion_length": 12, "save_steps": 1}
# Stage 4 of the tiny run moves the policy far between the two passes over a generation batch (a high
# learning rate, no warm-up step at lr 0), so that the ratio leaves ClipLow's [0.9, 1.2] and some tokens clip.
CLIP_TINY = {"learning_rate": 5e-2, "warmup_ratio": 0.0, "max_steps": 4}


def varied_reward(completions, **kwargs):
    """A test-only reward with spread: a random tiny model never writes the format, so format and accuracy
    alone give every completion 0 and GRPO's advantage (and update) would be exactly zero."""
    from factory.rewards import completion_text

    return [len(set(completion_text(c))) / 10 for c in completions]


@pytest.fixture(autouse=True)
def register_varied_reward(monkeypatch):
    from factory import rewards

    monkeypatch.setitem(rewards.REWARDS, "varied", varied_reward)


def tiny_config(tmp_path, synth_root, cot_dir, small_tiny_dirs, **train_kw) -> TrainConfig:
    stages = {name: {"max_steps": 2, "save_steps": 1, "logging_steps": 1, "batch_size": 4} for name in STAGE_ORDER}
    for name in ("2_grpo_format", "3_grpo_accuracy", "4_clgrpo"):
        stages[name].update(GRPO_TINY, rewards=STAGES[name].rewards + ["varied"])
    stages["4_clgrpo"].update(CLIP_TINY)
    data = {"output_dir": str(tmp_path), "name": "t", "data": str(synth_root), "cot": str(cot_dir),
            "model": {"source": str(small_tiny_dirs("internvl"))},
            "eval": {"limit": 4, "max_new_tokens": 8, "batch_size": 4},
            "train": {"lora": {"r": 4, "alpha": 8}, "stages": stages, **train_kw}}
    return config_lib.build(TrainConfig, data)


class Snapshots:
    """Wraps ``load_policy`` to record every parameter at load time, for before/after comparisons."""

    def __init__(self):
        self.loaded: dict[str, dict[str, torch.Tensor]] = {}

    def wrap(self, fn):
        def load(ctx, trainable=True):
            model, processor = fn(ctx, trainable)
            if trainable:
                self.loaded[ctx.name] = {n: p.detach().clone() for n, p in model.named_parameters()}
            return model, processor
        return load


class TinyRun(NamedTuple):
    cfg: TrainConfig
    results: dict  # stage -> done.json
    before: dict  # stage -> parameters at load time
    after: dict  # stage -> parameters of the model the runner returned
    trainers: dict  # GRPO stage -> the GRPOTrainer that trained it
    loss_inputs: dict  # GRPO stage -> for each _compute_loss call, the keys of its inputs


@pytest.fixture(scope="module")
def trained(tmp_path_factory, synth_root, cot_dir, small_tiny_dirs):
    """All five stages, 2-4 steps each, on the tiny InternVL; the models each runner returned."""
    from trl import GRPOTrainer

    from factory import rewards

    cfg = tiny_config(tmp_path_factory.mktemp("runs"), synth_root, cot_dir, small_tiny_dirs)
    snaps, finals, trainers, loss_inputs = Snapshots(), {}, {}, {}
    build, compute_loss = grpo.build_grpo_trainer, GRPOTrainer._compute_loss

    def keep_trainer(ctx):
        trainers[ctx.name] = build(ctx)
        return trainers[ctx.name]

    def spy_loss(self, model, inputs):
        loss_inputs.setdefault(Path(self.args.output_dir).parent.name, []).append(set(inputs))
        return compute_loss(self, model, inputs)

    def keep(fn):
        def run(ctx):
            model, processor, metrics = fn(ctx)
            finals[ctx.name] = {n: p.detach().clone() for n, p in model.named_parameters()}
            return model, processor, metrics
        return run

    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(rewards.REWARDS, "varied", varied_reward)
        mp.setattr(sft, "load_policy", snaps.wrap(common.load_policy))
        mp.setattr(grpo, "load_policy", snaps.wrap(common.load_policy))
        mp.setattr(sft, "run_sft", keep(sft.run_sft))
        mp.setattr(grpo, "run_grpo", keep(grpo.run_grpo))
        mp.setattr(grpo, "build_grpo_trainer", keep_trainer)
        mp.setattr(GRPOTrainer, "_compute_loss", spy_loss)
        results = train(cfg, progress=False)
    return TinyRun(cfg, results, snaps.loaded, finals, trainers, loss_inputs)


def test_every_stage_trains_its_adapter_and_leaves_the_base_frozen(trained):
    cfg, results, before, after = trained[:4]
    assert list(results) == list(STAGE_ORDER)
    for name in STAGE_ORDER:
        lora = [n for n in before[name] if "lora_" in n]
        assert lora, f"{name}: no LoRA parameters"
        changed = [n for n in lora if not torch.equal(before[name][n], after[name][n])]
        assert changed, f"{name}: no trainable weight changed"
        frozen = [n for n in before[name] if "lora_" not in n]
        moved = [n for n in frozen if not torch.equal(before[name][n], after[name][n])]
        assert not moved, f"{name}: frozen base weights changed: {moved[:3]}"


def test_each_stage_starts_from_its_parents_weights(trained):
    from safetensors.torch import load_file

    cfg, results, before, after = trained[:4]
    for name in STAGE_ORDER:
        parent = STAGES[name].parent
        lora_at_start = {n: t for n, t in before[name].items() if "lora_" in n}
        if parent is None:  # a fresh adapter: B starts at zero
            assert all(not t.any() for n, t in lora_at_start.items() if "lora_B" in n)
            continue
        saved = load_file(str(cfg.run_dir / parent / "adapter" / "adapter_model.safetensors"))
        assert len(saved) == len(lora_at_start)
        for key, tensor in saved.items():
            live = [n for n in lora_at_start if n.replace(".default", "") == key]
            assert live and torch.equal(lora_at_start[live[0]], tensor), f"{name} did not start from {parent}: {key}"


def test_stage_outputs_are_written(trained):
    cfg, results = trained[:2]
    for name in STAGE_ORDER:
        out = cfg.run_dir / name
        for f in ("adapter/adapter_config.json", "done.json", "eval.json", "predictions.jsonl", "stage.yaml",
                  "svlm_config.yaml", "log_history.json", "curves.png"):
            assert (out / f).is_file(), f"{name}: {f} missing"
        assert any((out / "tensorboard").iterdir())
        assert results[name]["eval"]["n"] == 4
        card = (out / "adapter" / "README.md").read_text()  # ours, not peft's generic card
        assert card.startswith("---\nlibrary_name: peft\n") and f"stage `{name}`" in card
    # checkpoints keep the last two: stage 4 saved after each of its 4 steps
    kept = sorted(p.name for p in (cfg.run_dir / "4_clgrpo" / "checkpoints").glob("checkpoint-*"))
    assert kept == ["checkpoint-3", "checkpoint-4"]
    history = json.loads((cfg.run_dir / "4_clgrpo" / "log_history.json").read_text())
    logged = set().union(*history)
    assert {"clip_ratio/low_mean", "rewards/format_reward/mean", "rewards/accuracy_reward/mean"} <= logged


def test_grpo_curves_show_accuracy_reward_per_class_and_entropy(trained):
    from factory.rewards import ACCURACY_BY_CLASS
    from factory.train.plots import stage_panels

    for name in ("3_grpo_accuracy", "4_clgrpo"):
        history = json.loads((trained.cfg.run_dir / name / "log_history.json").read_text())
        by_class = {k for row in history for k in row if k.startswith(ACCURACY_BY_CLASS + "/")}
        assert by_class and {k.rsplit("/", 1)[1] for k in by_class} <= set(EMOTIONS)
        panels = dict(stage_panels(history))
        assert set(panels["accuracy reward by class"]) == by_class and panels["entropy (mean per token)"]


def test_clip_low_stage_scores_with_old_logprobs_and_clips(trained):
    # trl computes old log-probs only when the batching lets the policy step between sampling and scoring;
    # without them the ratio is exactly 1 and ClipLow is plain GRPO.
    assert trained.loss_inputs["4_clgrpo"] and all("old_per_token_logps" in keys
                                                   for keys in trained.loss_inputs["4_clgrpo"])
    history = json.loads((trained.cfg.run_dir / "4_clgrpo" / "log_history.json").read_text())
    clipped = [row["clip_ratio/region_mean"] for row in history if "clip_ratio/region_mean" in row]
    assert max(clipped) > 0, f"no token was clipped: {clipped}"
    args = trained.trainers["4_clgrpo"].args  # the GRPOConfig the trainer holds, after every merge
    assert (args.epsilon, args.epsilon_high, args.num_iterations) == (0.1, 0.2, 2)


def test_each_stage_is_evaluated_with_at_least_its_completion_length(trained):
    from transformers import AutoTokenizer

    from factory.rewards import completion_text
    from factory.train.common import StageContext, stage_rows

    cfg, results = trained[:2]
    tokenizer = AutoTokenizer.from_pretrained(cfg.model.source)
    for name, done in results.items():
        stage = cfg.stage(name)
        if stage.kind == "grpo":
            need = stage.max_completion_length
        else:
            ctx = StageContext(name, stage, cfg, cfg.run_dir / name, cfg.model.source, Path(cfg.data), Path(cfg.cot))
            rows = stage_rows(ctx)
            need = max(len(tokenizer(completion_text(r["completion"]), add_special_tokens=False)["input_ids"])
                       for r in rows) + 1
        assert done["eval"]["max_new_tokens"] == max(cfg.eval.max_new_tokens, need), name
        if name != "0_baseline":  # label-only answers fit in the floor; traces and GRPO completions do not
            assert need > cfg.eval.max_new_tokens, name
        saved = json.loads((cfg.run_dir / name / "eval.json").read_text())
        assert 0.0 <= saved["truncation_rate"] <= 1.0 and saved == done["eval"]


class ScriptedModel(torch.nn.Module):
    """Stands in for a policy: "generates" fixed token rows, cut at ``max_new_tokens`` as generate would."""

    def __init__(self, rows: list[list[int]], eos: int):
        from transformers import GenerationConfig

        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # evaluate reads the device from a parameter
        self.rows, self.generation_config = rows, GenerationConfig(eos_token_id=eos)

    def generate(self, input_ids, max_new_tokens, **kwargs):
        new = torch.tensor([row[:max_new_tokens] for row in self.rows[:len(input_ids)]])
        return torch.cat([input_ids, new], dim=1)


def test_truncation_rate_counts_completions_cut_by_the_budget(tiny_dirs, synth_root):
    from transformers import AutoProcessor

    from factory.data.emoset import read_split
    from factory.evaluate import evaluate

    processor = AutoProcessor.from_pretrained(str(tiny_dirs("internvl")))
    tok = processor.tokenizer
    answer = tok("<think>x</think><answer>awe</answer>", add_special_tokens=False)["input_ids"]
    n, eos = len(answer), tok.eos_token_id
    # one completion ends with EOS (then padding), one runs past any budget without EOS
    model = ScriptedModel([answer + [eos] * (n + 1), answer * 2 + [answer[0]]], eos)
    records = read_split(synth_root, "val", strict=False, check_images="none").records[:2]
    roomy = evaluate(model, processor, records, max_new_tokens=n + 1, batch_size=2)
    assert [p.truncated for p in roomy.predictions] == [False, True] and roomy.truncation_rate == 0.5
    assert roomy.predictions[0].well_formed  # the answer that stopped is complete
    cut = evaluate(model, processor, records, max_new_tokens=n, batch_size=2)  # no room left for EOS
    assert cut.truncation_rate == 1.0 and cut.metrics()["max_new_tokens"] == n


def test_stage_table_shows_truncation():
    from factory.pipeline import format_table

    row = {"stage": "1_sft", "n": 4, "format_rate": 1.0, "accuracy": 0.5, "macro_recall": 0.5, "unparsable_rate": 0.0}
    table = format_table([{**row, "truncation_rate": 0.25, "max_new_tokens": 160}, row])
    assert "truncated" in table.splitlines()[0] and "25.0% @160" in table


def test_a_finished_run_is_skipped(trained, capsys):
    cfg, results = trained[:2]
    stamp = (cfg.run_dir / "1_sft" / "done.json").stat().st_mtime_ns
    again = train(cfg, ["1_sft", "2_grpo_format"], progress=False)
    assert again["1_sft"] == results["1_sft"]
    assert (cfg.run_dir / "1_sft" / "done.json").stat().st_mtime_ns == stamp
    assert capsys.readouterr().out.count("already done, skipped") == 2


class Kill(Exception):
    pass


@pytest.mark.parametrize("stage,runner", [("0_baseline", sft), ("1_sft", sft), ("2_grpo_format", grpo)])
def test_a_killed_stage_resumes_from_its_last_checkpoint(tmp_path, synth_root, cot_dir, small_tiny_dirs, stage,
                                                        runner):
    """Every kind of stage (label SFT, CoT SFT, GRPO after its parent) stopped mid-training resumes from its
    last checkpoint and ends at its step count, with nothing trained twice."""
    from transformers import TrainerCallback

    cfg = tiny_config(tmp_path, synth_root, cot_dir, small_tiny_dirs)
    names = [*([cfg.stage(stage).parent] if cfg.stage(stage).parent else []), stage]
    if len(names) == 2:
        train(cfg, names[:1], progress=False)  # the parent, whole
    cfg.train.stages[stage].update(max_steps=4, save_steps=2)

    class KillAtStep3(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 3:
                raise Kill

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(runner, "callbacks", lambda ctx: [KillAtStep3()])
        with pytest.raises(Kill):
            train(cfg, [stage], progress=False)
    out = cfg.run_dir / stage
    assert (out / "checkpoints" / "checkpoint-2").is_dir() and not (out / "done.json").exists()
    results = train(cfg, [stage], progress=False)
    assert results[stage]["train"]["resumed_from"].endswith("checkpoint-2")
    history = json.loads((out / "log_history.json").read_text())
    steps = [r["step"] for r in history if "loss" in r]
    assert max(steps) == 4 and steps == sorted(set(steps))  # steps 3 and 4 once each, after the resume


def _lora_matches_saved(live: dict, adapter_dir: Path) -> None:
    """Every tensor of the saved adapter equals the live model's (peft adds ".default" to the names)."""
    from safetensors.torch import load_file

    saved = load_file(str(adapter_dir / "adapter_model.safetensors"))
    assert len(saved) == len([n for n in live if "lora_" in n])
    for key, tensor in saved.items():
        name = next((n for n in live if n.replace(".default", "") == key), None)
        assert name is not None and torch.equal(live[name], tensor), f"{key} is not the saved adapter's"


@pytest.mark.parametrize("stage", ["0_baseline", "2_grpo_format"])
def test_an_adapter_without_evaluation_is_only_evaluated(trained, tmp_path, monkeypatch, stage):
    """The evaluated model is the stage's saved adapter, frozen: not a fresh one (which would be the base),
    and not the parent's (which a stage with a parent loads to continue it)."""
    import shutil

    import factory.evaluate

    cfg, results = trained[:2]
    shutil.copytree(cfg.run_dir, tmp_path / "t")
    cfg2 = config_lib.build(TrainConfig, {**config_lib.to_dict(cfg), "output_dir": str(tmp_path)})
    out = cfg2.run_dir / stage
    (out / "done.json").unlink()
    stamp = (out / "adapter" / "adapter_model.safetensors").stat().st_mtime_ns
    evaluated, real = [], factory.evaluate.evaluate

    def spy(model, *args, **kwargs):
        evaluated.append({n: p.detach().clone() for n, p in model.named_parameters()})
        assert not any(p.requires_grad for p in model.parameters())
        return real(model, *args, **kwargs)

    monkeypatch.setattr(factory.evaluate, "evaluate", spy)
    again = train(cfg2, [stage], progress=False)
    assert len(evaluated) == 1
    _lora_matches_saved(evaluated[0], out / "adapter")
    assert any(t.any() for n, t in evaluated[0].items() if "lora_B" in n)  # trained, not a fresh zero B
    assert again[stage]["eval"] == results[stage]["eval"]
    assert (out / "done.json").is_file()
    assert (out / "adapter" / "adapter_model.safetensors").stat().st_mtime_ns == stamp  # not retrained


def test_cli_train_success_prints_the_stage_table(tmp_path, synth_root, cot_dir, small_tiny_dirs, capsys):
    from factory.cli import main

    argv = ["train", "--stages", "1", "--output-dir", str(tmp_path), "--name", "c", "--data", str(synth_root),
            "--cot", str(cot_dir), "-q", f"model.source={small_tiny_dirs('internvl')}", "train.lora.r=4",
            "train.stages.1_sft.max_steps=1", "train.stages.1_sft.batch_size=2", "eval.limit=2",
            "eval.max_new_tokens=4"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    table = out[out.index("stage"):]
    assert "1_sft" in table and "format" in table.splitlines()[0]
    run = tmp_path / "c" / "1_sft"
    assert json.loads((run / "done.json").read_text())["eval"]["n"] == 2
    assert json.loads((run / "adapter" / "adapter_config.json").read_text())["r"] == 4
    assert json.loads((run / "log_history.json").read_text())[-1]["step"] == 1


def test_grpo_moves_under_the_production_rewards_alone(tmp_path, synth_root, small_tiny_dirs):
    """Stages 2 and 3 with only the stage table's rewards (format; format + accuracy), from a policy whose
    completions are well formed about a third of the time (25 steps of SFT on ``<think>a photo</think>
    <answer>label</answer>``, measured 9 of 24 samples): the rewards spread within groups and the adapter
    moves. From a random policy they are all 0 and GRPO's update is exactly zero."""
    from conftest import train_label_adapter

    stages = {name: {**GRPO_TINY, "num_generations": 4, "batch_size": 8, "max_completion_length": 16,
                     "max_steps": 2} for name in ("2_grpo_format", "3_grpo_accuracy")}
    cfg = config_lib.build(TrainConfig, {
        "output_dir": str(tmp_path), "name": "p", "data": str(synth_root),
        "model": {"source": str(small_tiny_dirs("internvl"))}, "eval": {"limit": 2, "max_new_tokens": 16},
        "train": {"stages": stages}})
    train_label_adapter(cfg.model.source, synth_root, cfg.run_dir / "1_sft" / "adapter", steps=25, think="a photo")
    snaps, finals = Snapshots(), {}

    def keep(ctx):
        model, processor, metrics = run_grpo(ctx)
        finals[ctx.name] = {n: p.detach().clone() for n, p in model.named_parameters()}
        return model, processor, metrics

    run_grpo = grpo.run_grpo
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(grpo, "load_policy", snaps.wrap(common.load_policy))
        mp.setattr(grpo, "run_grpo", keep)
        train(cfg, list(stages), progress=False)
    for name in stages:
        assert cfg.stage(name).rewards == STAGES[name].rewards
        history = json.loads((cfg.run_dir / name / "log_history.json").read_text())
        assert max(row.get("rewards/format_reward/std", 0) for row in history) > 0, name
        assert max(row.get("rewards/format_reward/mean", 0) for row in history) > 0, name
        moved = [n for n in snaps.loaded[name] if "lora_" in n and not torch.equal(snaps.loaded[name][n],
                                                                                    finals[name][n])]
        assert moved, f"{name}: the production rewards did not move the adapter"


def test_nf4_path_trains_on_cpu_behind_the_flag_with_fp32_adapters(tmp_path, synth_root, cot_dir, small_tiny_dirs):
    import bitsandbytes as bnb

    cfg = tiny_config(tmp_path, synth_root, cot_dir, small_tiny_dirs, quantization="nf4")
    snaps, seen, built = Snapshots(), {}, {}

    def trainable_dtypes(model):
        return {n: p.dtype for n, p in model.named_parameters() if p.requires_grad}

    def keep_dtypes(build):
        def wrapped(ctx):
            trainer = build(ctx)
            built[ctx.name] = trainable_dtypes(trainer.model)  # right after construction
            return trainer
        return wrapped

    def run(ctx):
        model, processor, metrics = original(ctx)
        seen["4bit"] = sum(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())
        seen["after"] = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}
        seen["trained"] = trainable_dtypes(model)
        return model, processor, metrics

    original = sft.run_sft
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sft, "load_policy", snaps.wrap(common.load_policy))
        mp.setattr(sft, "run_sft", run)
        mp.setattr(sft, "build_sft_trainer", keep_dtypes(sft.build_sft_trainer))
        mp.setattr(grpo, "build_grpo_trainer", keep_dtypes(grpo.build_grpo_trainer))
        train(cfg, ["1_sft", "2_grpo_format"], progress=False)
    assert seen["4bit"] > 0
    start = snaps.loaded["1_sft"]
    assert any(not torch.equal(start[n].to(t.dtype), t) for n, t in seen["after"].items())
    # trl casts trainable weights of a 4-bit model to bf16; both runners cast them back to fp32 master weights
    for where, dtypes in {**built, "1_sft trained": seen["trained"]}.items():
        assert dtypes and set(dtypes.values()) == {torch.float32}, (where, set(dtypes.values()))


def test_grpo_stage_trains_without_lora_dropout(tmp_path, synth_root, cot_dir, small_tiny_dirs):
    from peft import LoraConfig, get_peft_model

    from export.build import probe_inputs
    from factory.families import get_family
    from factory.models import load_model

    cfg = tiny_config(tmp_path, synth_root, cot_dir, small_tiny_dirs)
    loaded = load_model(small_tiny_dirs("internvl"), dtype="float32", device="cpu")
    torch.manual_seed(0)  # a parent adapter trained with dropout, with a non-zero delta (random B)
    parent = get_peft_model(loaded.model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.05, init_lora_weights=False,
                                                     target_modules=get_family("internvl").lora_target_modules))
    parent.save_pretrained(str(cfg.run_dir / "1_sft" / common.ADAPTER))
    ctx = common.StageContext("2_grpo_format", cfg.stage("2_grpo_format"), cfg, cfg.run_dir / "2_grpo_format",
                              str(small_tiny_dirs("internvl")), synth_root, cot_dir, progress=False)
    trainer = grpo.build_grpo_trainer(ctx)
    policy = trainer.model.train()  # trl computes old and new log-probs in train mode
    inputs = probe_inputs(loaded.processor, 2)
    with torch.no_grad():
        first, second = (torch.log_softmax(policy(**inputs).logits.float(), -1) for _ in range(2))
    assert torch.equal(first, second)


def test_grpo_can_sample_only_images_with_a_cot_trace(tmp_path, synth_root, cot_dir, small_tiny_dirs):
    from factory.cot.build import TRACES
    from factory.train.common import StageContext, stage_rows

    lines = (cot_dir / TRACES).read_text().splitlines()
    kept = lines[: len(lines) // 2]  # a CoT build in which only some images got a trace
    (tmp_path / "cot").mkdir()
    (tmp_path / "cot" / TRACES).write_text("\n".join(kept) + "\n")
    traced = {json.loads(line)["image"] for line in kept}
    cfg = tiny_config(tmp_path, synth_root, tmp_path / "cot", small_tiny_dirs)

    def images(prompts):
        stage = resolve_stage("3_grpo_accuracy", {"prompts": prompts})
        ctx = StageContext("3_grpo_accuracy", stage, cfg, tmp_path / "s", "base", synth_root, tmp_path / "cot")
        return {row["image"] for row in stage_rows(ctx)}

    everything, only_traced = images("all"), images("cot")
    assert only_traced == {i for i in everything if i in traced} and 0 < len(only_traced) < len(everything)
    with pytest.raises(ConfigError, match="grpo stage"):
        resolve_stage("1_sft", {"prompts": "cot"})


# --- config validation ------------------------------------------------------------------------------


def test_select_stages():
    assert select_stages("0-4") == list(STAGE_ORDER)
    assert select_stages("all") == list(STAGE_ORDER)
    assert select_stages("3,1") == ["1_sft", "3_grpo_accuracy"]
    for bad in ("5", "3-1", "sft"):
        with pytest.raises(ConfigError, match="stage"):
            select_stages(bad)


@pytest.mark.parametrize("overrides,message", [
    ({"num_iterations": 1}, "num_iterations: 2"),  # ClipLow that cannot act
    ({"epsilon": 0.2, "epsilon_high": 0.2}, "epsilon \\(ε_low\\) < epsilon_high"),
    ({"batch_size": 12, "grad_accum": 1}, "multiple of num_generations=8"),
    ({"num_generations": 1, "batch_size": 4}, "num_generations must be ≥ 2"),
    ({"rewards": ["format", "fromat"]}, "unknown reward"),
    ({"rewards": []}, "needs rewards"),
    ({"reward_weights": [1.0]}, "one weight per reward"),
    ({"data": "cot"}, "data: prompts"),
    ({"parent": "4_clgrpo"}, "earlier stage"),
    ({"learning_rte": 1e-5}, "did you mean 'learning_rate'"),
])
def test_stage_settings_that_cannot_work_are_refused(overrides, message):
    with pytest.raises(ConfigError, match=message):
        resolve_stage("4_clgrpo", overrides)


def test_asymmetric_clip_without_clip_low_must_also_be_able_to_act():
    with pytest.raises(ConfigError, match="never acts"):
        resolve_stage("3_grpo_accuracy", {"epsilon_high": 0.3})
    # more optimizer steps than generation batches also lets the clip act
    resolve_stage("4_clgrpo", {"num_iterations": 1, "steps_per_generation": 2, "batch_size": 8, "grad_accum": 1})


@pytest.mark.parametrize("grad_accum,steps_per_generation,num_iterations,acts", [
    (1, None, 2, True), (2, 1, 2, False), (2, None, 2, True), (4, 2, 1, False), (3, 2, 1, True), (2, 4, 1, True),
    (4, 1, 4, False), (1, None, 1, False),
])
def test_clip_low_follows_trls_rule_for_old_logprobs(grad_accum, steps_per_generation, num_iterations, acts):
    overrides = {"grad_accum": grad_accum, "steps_per_generation": steps_per_generation,
                 "num_iterations": num_iterations}
    if acts:
        resolve_stage("4_clgrpo", overrides)
    else:
        with pytest.raises(ConfigError, match="never acts"):
            resolve_stage("4_clgrpo", overrides)


@pytest.mark.parametrize("key", ["epsilon", "epsilon_high", "delta", "loss_type", "num_iterations",
                                 "steps_per_generation", "generation_batch_size", "gradient_accumulation_steps",
                                 "per_device_train_batch_size", "num_generations"])
def test_trl_pass_through_cannot_set_clip_or_batching(key):
    with pytest.raises(ConfigError, match=f"trl.{key} decides the clip or the batching"):
        resolve_stage("4_clgrpo", {"trl": {key: 1}})


def test_trl_pass_through_names_the_stage_key_and_passes_other_keys():
    with pytest.raises(ConfigError, match="use the stage key `epsilon`"):
        resolve_stage("3_grpo_accuracy", {"trl": {"epsilon": 0.3}})
    with pytest.raises(ConfigError, match="use the stage key `grad_accum`"):
        resolve_stage("1_sft", {"trl": {"gradient_accumulation_steps": 4}})
    assert resolve_stage("4_clgrpo", {"trl": {"importance_sampling_level": "token"}}).trl


@pytest.mark.parametrize("loss_type,ok", [("dapo", True), ("grpo", True), ("dr_grpo", True), ("bnpo", True),
                                          ("sapo", False), ("vespo", False), ("cispo", False)])
def test_clip_low_needs_a_loss_with_a_two_sided_clip(loss_type, ok):
    if ok:
        resolve_stage("4_clgrpo", {"loss_type": loss_type})
    else:
        with pytest.raises(ConfigError, match="no two-sided clip"):
            resolve_stage("4_clgrpo", {"loss_type": loss_type})
    resolve_stage("3_grpo_accuracy", {"loss_type": loss_type})  # a symmetric, plain GRPO stage takes any


def test_final_grpo_config_is_checked_too(tmp_path):
    from factory.train.common import StageContext

    stage = resolve_stage("4_clgrpo")
    ctx = StageContext("4_clgrpo", stage, TrainConfig(), tmp_path, "base", tmp_path, tmp_path, progress=False)
    assert grpo.grpo_config(ctx).epsilon == 0.1
    stage.grad_accum, stage.steps_per_generation = 2, 1  # past the table's check: the trainer's config is checked
    with pytest.raises(ConfigError, match="never acts"):
        grpo.grpo_config(ctx)


def test_sft_stage_rejects_grpo_settings():
    with pytest.raises(ConfigError, match="takes no rewards"):
        StageConfig(kind="sft", rewards=["format"])


def test_missing_parent_output_is_refused_with_what_to_run(tmp_path, synth_root, cot_dir, small_tiny_dirs):
    cfg = tiny_config(tmp_path, synth_root, cot_dir, small_tiny_dirs)
    with pytest.raises(ConfigError, match="continues from 2_grpo_format.*--stages 2-3"):
        plan(cfg, ["3_grpo_accuracy"])


def test_unknown_stage_override_is_refused():
    with pytest.raises(ConfigError, match="unknown stage"):
        config_lib.build(TrainConfig, {"train": {"stages": {"5_dpo": {}}}})


def test_cli_train_errors_exit_2(tmp_path, synth_root, capsys):
    from factory.cli import main

    code = main(["train", "--stages", "4", "--output-dir", str(tmp_path), "--data", str(synth_root), "-q"])
    assert code == 2
    assert "continues from 3_grpo_accuracy" in capsys.readouterr().err
    code = main(["train", "--output-dir", str(tmp_path), "train.stages.4_clgrpo.num_iterations=1"])
    assert code == 2 and "num_iterations: 2" in capsys.readouterr().err


def test_a_finished_stage_is_reused_only_when_made_from_the_same_settings_and_parent(
        tmp_path, synth_root, cot_dir, small_tiny_dirs):
    """A rerun after a config change refused to silently reuse stale stages: it names what differs and the
    way out; --overwrite retrains the stage, and a retrained parent makes its children stale."""
    from factory.errors import SVLMError

    cfg = tiny_config(tmp_path, synth_root, cot_dir, small_tiny_dirs)
    train(cfg, ["1_sft", "2_grpo_format"], progress=False)
    run = cfg.run_dir
    weights = {s: run / s / "adapter" / "adapter_model.safetensors" for s in ("1_sft", "2_grpo_format")}
    stamps = {s: p.stat().st_mtime_ns for s, p in weights.items()}
    train(cfg, ["1_sft", "2_grpo_format"], progress=False)  # same settings: both reused
    assert {s: p.stat().st_mtime_ns for s, p in weights.items()} == stamps

    saved = (run / "1_sft" / "svlm_config.yaml").read_text()
    cfg.train.stages["1_sft"]["learning_rate"] = 1e-3
    with pytest.raises(SVLMError, match=r"1_sft was trained from other settings \(stage.learning_rate differ\).*"
                                        r"--overwrite"):
        train(cfg, ["1_sft"], progress=False)
    assert (run / "1_sft" / "svlm_config.yaml").read_text() == saved  # refused before writing anything

    cfg.train.overwrite = True
    train(cfg, ["1_sft"], progress=False)
    assert weights["1_sft"].stat().st_mtime_ns != stamps["1_sft"]
    cfg.train.overwrite = False
    with pytest.raises(SVLMError, match="parent_adapter_sha256"):
        train(cfg, ["2_grpo_format"], progress=False)
    cfg.train.overwrite = True
    train(cfg, ["2_grpo_format"], progress=False)
    assert weights["2_grpo_format"].stat().st_mtime_ns != stamps["2_grpo_format"]
