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
