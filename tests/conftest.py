"""Shared fixtures: a small synthetic EmoSet and one saved tiny model per family (built once per session)."""

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


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory):
    """family name -> directory of a saved tiny model (lazily built)."""
    from factory.tiny import save_tiny

    cache: dict[str, object] = {}

    def get(family: str):
        if family not in cache:
            cache[family] = save_tiny(family, "tiny", tmp_path_factory.mktemp(f"tiny_{family}"))
        return cache[family]

    return get


@pytest.fixture(scope="session")
def cot_dir(synth_root, tmp_path_factory):
    """A CoT build of the synthetic train split (offline attribute teacher)."""
    from factory.cot.build import CotConfig, build

    out = tmp_path_factory.mktemp("cot") / "cot"
    build(CotConfig(data=str(synth_root), split="train", out=str(out)), progress=False)
    return out


@pytest.fixture(scope="session")
def baseline_run(tmp_path_factory, synth_root):
    """A tiny InternVL whose label-only baseline answers <answer>label</answer> (trained in ~3 s)."""
    from factory import config as config_lib
    from factory.train.runner import TrainConfig, train

    cfg = config_lib.build(TrainConfig, {
        "output_dir": str(tmp_path_factory.mktemp("runs")), "name": "b", "data": str(synth_root),
        "model": {"size": "tiny"}, "eval": {"limit": 4, "max_new_tokens": 8},
        "train": {"lora": {"r": 16, "alpha": 32, "dropout": 0.0, "modules_to_save": ["lm_head"]},
                  "stages": {"0_baseline": {"max_steps": 60, "learning_rate": 1e-2, "grad_accum": 1,
                                            "save_steps": 1000}}}})
    train(cfg, ["0_baseline"], progress=False)
    return cfg.run_dir


@pytest.fixture(scope="session")
def exported(baseline_run):
    """fp32/int8/int4 packages of the tiny baseline."""
    from export.build import ExportConfig, export

    out = baseline_run / "export"
    manifests = export(ExportConfig(run=str(baseline_run), out=str(out), validate_images=6, max_new_tokens=12))
    return out, manifests
