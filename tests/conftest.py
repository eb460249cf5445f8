"""Shared fixtures: a small synthetic EmoSet and one saved tiny model per family (built once per session).

The tiny models carry their family's real tokenizer, chat template and processor settings (151k tokens for
InternVL and Qwen2-VL), so every test runs the real-tokenizer path; only the layer sizes are small.
"""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory):
    from factory.data.synth import SynthConfig, generate

    root = tmp_path_factory.mktemp("emoset") / "synth"
    generate(SynthConfig(out=str(root), n=80, seed=1, image_size=48))
    return root


def _saved_tiny_models(tmp_path_factory, tokenizer: str):
    """family name -> directory of a saved tiny model with this tokenizer (each built once, when asked).

    ``SVLM_TEST_TINY_CACHE=DIR`` keeps them in DIR across pytest sessions (benchmarks/mutation.sh sets it: each
    mutant is a fresh session; the models are random weights from a fixed seed, none of the mutated modules)."""
    from factory.tiny import save_tiny

    cache: dict[str, object] = {}
    keep = os.environ.get("SVLM_TEST_TINY_CACHE")

    def get(family: str):
        if family not in cache:
            if keep:
                from pathlib import Path

                done = Path(keep) / f"{family}_{tokenizer}"
                if not done.is_dir():
                    tmp = Path(tmp_path_factory.mktemp(f"tiny_{family}_{tokenizer}"))
                    save_tiny(family, "tiny", tmp / "m", tokenizer=tokenizer)
                    done.parent.mkdir(parents=True, exist_ok=True)
                    try:
                        os.rename(tmp / "m", done)  # atomic: a parallel session may have won the race
                    except OSError:
                        pass
                cache[family] = done
            else:
                cache[family] = save_tiny(family, "tiny", tmp_path_factory.mktemp(f"tiny_{family}_{tokenizer}"),
                                          tokenizer=tokenizer)
        return cache[family]

    return get


#: Mutation testing (benchmarks/mutation.sh): the test files that judge each mutated module's mutants. mutmut
#: runs every selected test that called the mutated function; a GRPO stage test that merely calls a prompt
#: helper costs a minute per mutant and judges nothing about it, so each module keeps its own tests.
MUTATION_SCOPE = {
    "factory.rewards": ("test_rewards.py",),
    "factory.prompts": ("test_prompts.py", "test_rewards.py", "test_compare.py", "test_runtime_unit.py"),
    "factory.train.stages": ("test_train.py", "test_configs_dir.py", "test_rewards.py"),
    "factory.train.rollout": ("test_rollout.py",),
    "export.compare": ("test_compare.py",),
    "svlm_runtime.package": ("test_runtime_unit.py",),
    "svlm_runtime.preprocess": ("test_preprocess.py",),
}


def pytest_collection_modifyitems(config, items):
    mutant = os.environ.get("MUTANT_UNDER_TEST", "")
    if "__mutmut_" not in mutant:
        return
    module = next((m for m in MUTATION_SCOPE if mutant.startswith(m + ".")), None)
    if module is None:
        return
    keep = [item for item in items if item.path.name in MUTATION_SCOPE[module]]
    drop = [item for item in items if item.path.name not in MUTATION_SCOPE[module]]
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory):
    """family name -> directory of a saved tiny model with the family's real tokenizer (lazily built)."""
    return _saved_tiny_models(tmp_path_factory, "real")


@pytest.fixture(scope="session")
def small_tiny_dirs(tmp_path_factory):
    """family name -> a tiny model with the small local tokenizer (4k tokens). For tests of training
    mechanics (stage hand-over, resume, precision, rollouts), which do not depend on the tokenizer: with the
    real 151k-row output layer every trl step is about 10x slower on this CPU. The real tokenizer's path
    through training, evaluation and export is tested per family with ``tiny_dirs``."""
    return _saved_tiny_models(tmp_path_factory, "small")


@pytest.fixture(scope="session")
def tiny_processors(tiny_dirs):
    """family name -> the tiny model's processor as load_model gives it (loaded once; do not modify it)."""
    from transformers import AutoProcessor

    from factory.families import get_family

    cache: dict[str, object] = {}

    def get(family: str):
        if family not in cache:
            cache[family] = AutoProcessor.from_pretrained(tiny_dirs(family))
            get_family(family).apply_image_policy(cache[family])
        return cache[family]

    return get


@pytest.fixture(scope="session")
def cot_dir(synth_root, tmp_path_factory):
    """A CoT build of the synthetic train split (offline attribute teacher)."""
    from factory.cot.build import CotConfig, build

    out = tmp_path_factory.mktemp("cot") / "cot"
    build(CotConfig(data=str(synth_root), split="train", out=str(out)), progress=False)
    return out


def train_label_adapter(base: str, data_root, out, steps: int = 160, seed: int = 0, think: str | None = None):
    """LoRA (r16) + a trained output layer for label-only answers, with a plain loop that scores only the
    answer tokens (``logits_to_keep``). trl's SFTTrainer scores every position against the 151k-token head
    (60 steps took 604 s here, and its answers were still invalid); this loop takes ~0.4 s a step. It learns
    the same rows: the chat template's assistant turn, tokenized alone as trl does. 160 steps (~65 s): after
    80, some answers were so flat that the greedy label was not the most probable one; after 120 the model
    used 3 labels; after 160 it uses 7, and every answer's top probability is ≥ 0.45 (measured).

    ``think``: answer the CoT question with ``<think>{think}</think><answer>label</answer>`` instead (a
    policy that writes the strict format, for GRPO under the real rewards)."""
    import random

    import torch
    from PIL import Image
    from peft import LoraConfig, get_peft_model

    from factory.inference import append_tokens
    from factory.cot.datasets import label_rows
    from factory.data.emoset import read_split
    from factory.models import load_model
    from factory.prompts import render_prompt

    torch.manual_seed(seed)
    rng = random.Random(seed)
    loaded = load_model(base, dtype="float32", device="cpu")
    processor, tok = loaded.processor, loaded.processor.tokenizer
    model = get_peft_model(loaded.model, LoraConfig(
        r=16, lora_alpha=32, lora_dropout=0.0, target_modules=loaded.family.lora_target_modules,
        modules_to_save=["lm_head"], task_type="CAUSAL_LM"))
    style = "label" if think is None else "cot"
    prompt = render_prompt(processor, style)
    rows = []
    records = read_split(data_root, "train", check_images="none").records
    for row in label_rows(records) if think is None else cot_rows(records, think):
        answer = processor.apply_chat_template(row["prompt"] + row["completion"])[len(prompt):]
        inputs = processor(images=[[Image.open(row["image"]).convert("RGB")]], text=[prompt], return_tensors="pt")
        rows.append((inputs, tok(answer, add_special_tokens=False).input_ids))
    head = [p for n, p in model.named_parameters() if p.requires_grad and "lora_" not in n]
    lora = [p for n, p in model.named_parameters() if p.requires_grad and "lora_" in n]
    # a random 151k-row output layer has everything to learn: it takes a higher rate than the LoRA weights
    opt = torch.optim.AdamW([{"params": lora, "lr": 4e-3}, {"params": head, "lr": 1e-2}], weight_decay=0.0,
                            fused=True)  # 10x faster than the default on the 151k-row head
    base_lr = [g["lr"] for g in opt.param_groups]
    model.train()
    threads = torch.get_num_threads()
    # One thread: the step is hundreds of small ops, and where the 2 cores are shared each OpenMP barrier
    # waits out another process's time slice (measured: 20 steps in 53 s with 2 threads, 8 s with 1).
    torch.set_num_threads(1)
    try:
        for step in range(steps):
            for group, lr in zip(opt.param_groups, base_lr):
                group["lr"] = lr * min(1.0, (step + 1) / 10)  # 10 warm-up steps
            batch = rng.sample(rows, 8)
            width = max(len(ids) for _, ids in batch)
            answer = torch.full((len(batch), width), tok.pad_token_id)
            labels = torch.full((len(batch), width), -100)
            for i, (_, ids) in enumerate(batch):
                answer[i, :len(ids)] = labels[i, :len(ids)] = torch.tensor(ids)
            inputs = {key: torch.cat([x[key] for x, _ in batch]) for key in batch[0][0]}
            inputs = append_tokens(inputs, answer, (labels != -100).long())
            logits = model(**inputs, logits_to_keep=width + 1).logits[:, :-1]
            loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten())
            loss.backward()
            opt.step()
            opt.zero_grad()
    finally:
        torch.set_num_threads(threads)
    model.save_pretrained(out)
    return loss.item()


def cot_rows(records, think: str) -> list[dict]:
    """Rows like ``label_rows``' that answer the CoT question with a fixed reasoning text."""
    from factory.prompts import build_messages, format_answer

    return [{"prompt": build_messages("cot"), "image": str(r.image_path),
             "completion": build_messages("cot", format_answer(r.emotion, think))[1:]} for r in records]


def label_baseline_run(source, synth_root, runs, name: str):
    """A run ``runs/name`` whose stage 0_baseline is ``train_label_adapter``'s adapter on ``source``, evaluated
    and written by ``svlm train`` like any stage (its "adapter trained, not evaluated" path)."""
    from factory import config as config_lib
    from factory.train.runner import TrainConfig, train

    cfg = config_lib.build(TrainConfig, {
        "output_dir": str(runs), "name": name, "data": str(synth_root),
        "model": {"source": str(source)}, "eval": {"limit": 4, "max_new_tokens": 12}})
    train_label_adapter(str(source), synth_root, cfg.run_dir / "0_baseline" / "adapter")
    train(cfg, ["0_baseline"], progress=False)
    return cfg.run_dir


@pytest.fixture(scope="session")
def baseline_run(tmp_path_factory, synth_root, tiny_dirs):
    """A tiny real-tokenizer InternVL whose label-only baseline answers <answer>label</answer>, peaked and
    image-dependent on its training images (an answer's tokens: <, answer, >, am, usement, </, answer, >).

    The adapter comes from ``train_label_adapter``; ``svlm train`` then finds it, evaluates it and writes the
    stage like any other (its "adapter trained, not evaluated" path). The stage runners are tested on their
    own in test_train.py."""
    return label_baseline_run(tiny_dirs("internvl"), synth_root, tmp_path_factory.mktemp("runs"), "b")


@pytest.fixture(scope="session")
def exported(baseline_run):
    """fp32/int8/int4 packages of the tiny baseline."""
    from export.build import ExportConfig, export

    out = baseline_run / "export"
    manifests = export(ExportConfig(run=str(baseline_run), out=str(out), validate_images=6, max_new_tokens=12))
    return out, manifests
