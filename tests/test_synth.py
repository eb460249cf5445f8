"""The synthetic EmoSet: official layout, determinism, balance, measured attributes, learnable evidence."""

import hashlib
import json

import numpy as np
import pytest
from PIL import Image

from factory.data.emoset import load_info, read_split
from factory.data.synth import SynthConfig, generate, measure_brightness, measure_colorfulness
from factory.errors import ConfigError, DataError
from factory.prompts import EMOTIONS


def _digest(root):
    h = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        if path.is_file() and path.name != "svlm_config.yaml":
            h.update(path.relative_to(root).as_posix().encode())
            h.update(path.read_bytes())
    return h.hexdigest()


def test_layout_matches_the_official_format(synth_root):
    assert json.loads((synth_root / "info.json").read_text()) == load_info()
    entries = json.loads((synth_root / "train.json").read_text())
    emotion, image_id, image_rel, ann_rel = entries[0]
    assert image_rel == f"image/{emotion}/{image_id}.jpg"
    assert ann_rel == f"annotation/{emotion}/{image_id}.json"
    with Image.open(synth_root / image_rel) as img:
        assert img.format == "JPEG"


def test_deterministic_per_seed(tmp_path):
    a = generate(SynthConfig(out=str(tmp_path / "a"), n=16, seed=3, image_size=32))
    b = generate(SynthConfig(out=str(tmp_path / "b"), n=16, seed=3, image_size=32))
    c = generate(SynthConfig(out=str(tmp_path / "c"), n=16, seed=4, image_size=32))
    assert a == b == c
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    assert _digest(tmp_path / "a") != _digest(tmp_path / "c")


def test_attributes_come_from_pixels_and_official_vocabularies(synth_root):
    info = load_info()
    vocab = {k: set(info[k]["label2idx"]) for k in ("scene", "object", "facial_expression", "human_action")}
    for rec in read_split(synth_root, "train").records:
        with Image.open(rec.image_path) as img:
            rgb = img.convert("RGB")
            assert rec.attributes["brightness"] == measure_brightness(rgb)
            assert rec.attributes["colorfulness"] == measure_colorfulness(rgb)
        for key in ("scene", "facial_expression", "human_action"):
            if key in rec.attributes:
                assert rec.attributes[key] in vocab[key]
        assert set(rec.attributes.get("object", [])) <= vocab["object"]


def test_brightness_and_colorfulness_measure_what_they_say():
    grey = Image.new("RGB", (20, 20), (128, 128, 128))
    assert measure_brightness(grey) == 0.5 and measure_colorfulness(grey) == 0.0
    assert measure_brightness(Image.new("RGB", (8, 8), (255, 255, 255))) == 1.0
    stripes = np.zeros((20, 20, 3), np.uint8)
    stripes[::2] = (255, 0, 0)
    stripes[1::2] = (0, 0, 255)
    assert measure_colorfulness(Image.fromarray(stripes)) >= 0.8


def _colour_features(root, split):
    feats, labels = [], []
    for rec in read_split(root, split).records:
        with Image.open(rec.image_path) as img:
            arr = np.asarray(img.convert("RGB").resize((16, 16)), dtype=np.float32) / 255.0
        hist = [np.histogram(arr[..., c], bins=6, range=(0, 1))[0] for c in range(3)]
        feats.append(np.concatenate([np.concatenate(hist) / arr[..., 0].size, arr.mean((0, 1)), arr.std((0, 1))]))
        labels.append(rec.emotion)
    return np.stack(feats), labels


def _linear_probe_accuracy(root):
    from sklearn.linear_model import LogisticRegression

    x, y = _colour_features(root, "train")
    xt, yt = _colour_features(root, "test")
    return LogisticRegression(max_iter=2000).fit(x, y).score(xt, yt)


def test_images_carry_learnable_evidence_and_noise_knobs_make_it_harder(tmp_path):
    """A colour-histogram linear probe is far above chance on clean data and loses accuracy with noise."""
    common = dict(n=320, seed=0, image_size=48, fractions=[0.75, 0.0, 0.25])
    clean = generate(SynthConfig(out=str(tmp_path / "clean"), ambiguity=0.0, label_noise=0.0, **common))
    noisy = generate(SynthConfig(out=str(tmp_path / "noisy"), ambiguity=0.8, label_noise=0.3, **common))
    assert clean == noisy
    acc_clean = _linear_probe_accuracy(tmp_path / "clean")
    acc_noisy = _linear_probe_accuracy(tmp_path / "noisy")
    assert acc_clean > 0.6, acc_clean  # chance is 1/8
    assert acc_noisy < acc_clean - 0.1, (acc_clean, acc_noisy)


def test_rerun_is_idempotent_and_foreign_folders_are_never_deleted(tmp_path):
    cfg = SynthConfig(out=str(tmp_path / "d"), n=16, image_size=32)
    first = generate(cfg)
    marker = tmp_path / "d" / "train.json"
    mtime = marker.stat().st_mtime_ns
    assert generate(cfg) == first and marker.stat().st_mtime_ns == mtime  # reused, not rewritten
    with pytest.raises(DataError, match="other settings"):
        generate(SynthConfig(out=str(tmp_path / "d"), n=24, image_size=32))
    assert generate(SynthConfig(out=str(tmp_path / "d"), n=24, image_size=32), overwrite=True)["train"] > first["train"]
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "precious.txt").write_text("keep me")
    with pytest.raises(DataError, match="not a synthetic EmoSet"):
        generate(SynthConfig(out=str(foreign), n=16), overwrite=True)
    assert (foreign / "precious.txt").read_text() == "keep me"


@pytest.mark.parametrize("kwargs,message", [
    (dict(n=4), "at least 8"),
    (dict(fractions=[0.9, 0.2, 0.0]), "fractions"),
    (dict(ambiguity=1.5), "ambiguity"),
])
def test_invalid_settings_are_config_errors(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        SynthConfig(**kwargs)


def test_every_emotion_is_balanced(synth_root):
    per_class = read_split(synth_root, "train").summary()["per_class"]
    assert set(per_class) == set(EMOTIONS) and len(set(per_class.values())) == 1
