"""Synthetic EmoSet: the exact official layout, with images whose pixels carry evidence for their emotion.

No dataset can be downloaded here, so tests and the default ``svlm run`` use this. Each emotion has a visual
grammar (background palette and brightness, a shape motif, an optional face with one of EmoSet's six facial
expressions) and pools of scenes, objects and actions from the official vocabularies that the attribute
teacher can reason over. Three knobs keep accuracy from being trivially 100 %:

* ``ambiguity``: probability that one cue group (background, motif or face) is drawn from another emotion;
* ``label_noise``: probability that the recorded label differs from the emotion that was drawn (like
  crowd-sourced labels, the annotation then agrees with the noisy label);
* ``face_prob``: how often a face (the strongest cue) is present at all.

Brightness and colorfulness in each annotation are measured from the saved pixels, rounded to EmoSet's
0.1 steps. Output is class-balanced per split and deterministic per seed.

It generates EmoSet itself, so it names EmoSet's emotions; a task labelled from an annotation attribute reads
the same data (``facial_expression``: the expression drawn on each face, recorded with it).
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from factory.prompts import EMOTIONS

# Expression names are EmoSet's facial_expression vocabulary.
STYLES: dict[str, dict] = {
    "amusement": dict(bg=((255, 214, 90), (255, 150, 190)), motif="balloons", colors=((255, 80, 120), (80, 200, 255), (255, 230, 60)),
                      face=("happy",), scenes=("amusement_park", "carrousel", "playground", "arcade", "water_park"),
                      objects=("Balloon", "Toy", "Teddy bear", "Ice cream", "Doll"), actions=("laughing", "juggling balls", "bouncing on trampoline")),
    "awe": dict(bg=((20, 40, 120), (150, 110, 220)), motif="mountains", colors=((230, 235, 255), (120, 140, 210), (250, 250, 200)),
                face=("surprise",), scenes=("mountain", "mountain_snowy", "glacier", "canyon", "sky", "waterfall"),
                objects=("Tree", "Castle", "Tower", "Skyscraper", "Whale"), actions=("paragliding", "rock climbing", "skydiving")),
    "contentment": dict(bg=((190, 230, 200), (240, 240, 210)), motif="hills", colors=((120, 190, 130), (200, 220, 160), (250, 220, 180)),
                        face=("happy",), scenes=("lawn", "park", "botanical_garden", "patio", "lake", "beach"),
                        objects=("Flower", "Coffee cup", "Cat", "Book", "Houseplant"), actions=("reading book", "tai chi", "petting cat")),
    "excitement": dict(bg=((255, 90, 30), (255, 200, 0)), motif="bursts", colors=((255, 0, 90), (0, 220, 120), (255, 255, 255)),
                       face=("surprise", "happy"), scenes=("stadium", "stage", "discotheque", "racecourse", "ski_slope"),
                       objects=("Football", "Motorcycle", "Surfboard", "Drum", "Guitar"), actions=("celebrating", "surfing water", "dancing")),
    "anger": dict(bg=((110, 0, 0), (30, 0, 0)), motif="jagged", colors=((230, 30, 20), (20, 20, 20), (255, 120, 0)),
                  face=("angry",), scenes=("street", "boxing_ring", "arena", "alley", "jail_cell"),
                  objects=("Weapon", "Handgun", "Knife", "Flag", "Car"), actions=("boxing ", "punching bag", "slapping", "wrestling")),
    "disgust": dict(bg=((90, 100, 30), (120, 90, 50)), motif="blobs", colors=((150, 170, 40), (100, 70, 30), (180, 190, 90)),
                    face=("disgust",), scenes=("landfill", "junkyard", "swamp", "slum", "bathroom"),
                    objects=("Worm", "Insect", "Waste container", "Toilet", "Snail"), actions=("garbage collecting", "cleaning toilet", "sniffing")),
    "fear": dict(bg=((10, 10, 30), (50, 50, 70)), motif="spikes", colors=((200, 200, 220), (90, 0, 110), (20, 90, 90)),
                 face=("fear",), scenes=("catacomb", "cemetery", "corridor", "forest_path", "basement"),
                 objects=("Spider", "Skull", "Snake", "Bat", "Scorpion"), actions=("holding snake", "abseiling", "ice climbing")),
    "sadness": dict(bg=((80, 90, 110), (140, 145, 155)), motif="rain", colors=((170, 180, 200), (60, 70, 90), (110, 120, 150)),
                    face=("sad",), scenes=("cemetery", "hospital_room", "waiting_room", "street", "alley"),
                    objects=("Umbrella", "Chair", "Window", "Candle", "Bench"), actions=("crying", "waiting in line", "smoking")),
}
CUE_GROUPS = ("background", "motif", "face")


@dataclass
class SynthConfig:
    """``svlm data synth``: where and how much synthetic EmoSet to write."""

    out: str = ""  # required by `svlm data synth` (default data/synth_emoset); `svlm run` uses its run folder
    n: int = 800  # total images; split class-balanced into train/val/test
    seed: int = 0
    image_size: int = 160  # square JPEGs; processors resize to the model's input size anyway
    fractions: list[float] = field(default_factory=lambda: [0.8, 0.1, 0.1])  # train, val, test
    ambiguity: float = 0.25  # chance that one cue group comes from another emotion
    label_noise: float = 0.05  # chance that the recorded label is not the drawn emotion
    face_prob: float = 0.6  # chance that a face (the strongest cue) is drawn at all
    jpeg_quality: int = 90

    def __post_init__(self):
        from factory.errors import ConfigError

        if self.n < len(EMOTIONS):
            raise ConfigError(f"n must be at least {len(EMOTIONS)} (one image per emotion), got {self.n}")
        if len(self.fractions) != 3 or abs(sum(self.fractions) - 1.0) > 1e-6 or min(self.fractions) < 0:
            raise ConfigError(f"fractions must be 3 non-negative numbers (train, val, test) summing to 1, "
                              f"got {self.fractions}")
        for name in ("ambiguity", "label_noise", "face_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if not 16 <= self.image_size <= 4096:
            raise ConfigError(f"image_size must be in [16, 4096], got {self.image_size}")


@dataclass
class SynthSpec:
    """What to draw for one image: which emotion each cue group comes from."""

    label: str  # recorded label
    background: str
    motif: str
    face: str | None  # emotion the face comes from; None: no face
    expression: str | None = None  # EmoSet facial_expression drawn on the face


def _jitter(rng: np.random.Generator, color, amount=25):
    return tuple(int(np.clip(c + rng.integers(-amount, amount + 1), 0, 255)) for c in color)


def _gradient(size: int, top, bottom) -> Image.Image:
    t = np.linspace(0.0, 1.0, size)[:, None, None]
    arr = (1 - t) * np.array(top)[None, None, :] + t * np.array(bottom)[None, None, :]
    return Image.fromarray(np.repeat(arr, size, axis=1).astype(np.uint8))


def _draw_motif(draw: ImageDraw.ImageDraw, rng, size: int, motif: str, colors) -> None:
    pick = lambda: _jitter(rng, colors[rng.integers(len(colors))])  # noqa: E731
    s = size
    if motif == "balloons":
        for _ in range(rng.integers(3, 7)):
            x, y, r = rng.uniform(0.1, 0.9) * s, rng.uniform(0.1, 0.6) * s, rng.uniform(0.05, 0.1) * s
            draw.ellipse([x - r, y - r * 1.2, x + r, y + r * 1.2], fill=pick())
            draw.line([x, y + r * 1.2, x + rng.uniform(-5, 5), y + r * 3], fill=(60, 60, 60), width=1)
    elif motif == "mountains":
        for _ in range(rng.integers(2, 4)):
            cx, w, h = rng.uniform(0.1, 0.9) * s, rng.uniform(0.3, 0.6) * s, rng.uniform(0.5, 0.85) * s
            draw.polygon([(cx - w, s), (cx, s - h), (cx + w, s)], fill=pick())
        for _ in range(rng.integers(5, 15)):  # stars
            x, y = rng.uniform(0, s), rng.uniform(0, 0.35 * s)
            draw.ellipse([x - 1, y - 1, x + 1, y + 1], fill=(255, 255, 230))
    elif motif == "hills":
        for i in range(3):
            y0 = s * (0.55 + 0.13 * i)
            pts = [(x, y0 + math.sin(x / s * math.pi * rng.uniform(1, 2) + rng.uniform(0, 6)) * s * 0.05)
                   for x in np.linspace(0, s, 24)]
            draw.polygon(pts + [(s, s), (0, s)], fill=pick())
        x, y, r = rng.uniform(0.2, 0.8) * s, 0.18 * s, 0.08 * s
        draw.ellipse([x - r, y - r, x + r, y + r], fill=(255, 240, 190))
    elif motif == "bursts":
        for _ in range(rng.integers(2, 4)):
            cx, cy, r = rng.uniform(0.2, 0.8) * s, rng.uniform(0.2, 0.8) * s, rng.uniform(0.12, 0.25) * s
            n = int(rng.integers(7, 12))
            pts = [(cx + math.cos(a) * (r if k % 2 == 0 else r * 0.45), cy + math.sin(a) * (r if k % 2 == 0 else r * 0.45))
                   for k, a in enumerate(np.linspace(0, 2 * math.pi, 2 * n, endpoint=False))]
            draw.polygon(pts, fill=pick())
        for _ in range(rng.integers(10, 25)):  # confetti
            x, y = rng.uniform(0, s), rng.uniform(0, s)
            draw.rectangle([x, y, x + 3, y + 3], fill=pick())
    elif motif == "jagged":
        for _ in range(rng.integers(2, 4)):
            y = rng.uniform(0.2, 0.9) * s
            pts = [(x, y + (rng.uniform(-0.12, 0.12) * s)) for x in np.linspace(0, s, int(rng.integers(6, 12)))]
            draw.line(pts, fill=pick(), width=int(max(2, s * 0.03)))
        cx, cy = rng.uniform(0.3, 0.7) * s, rng.uniform(0.3, 0.7) * s
        draw.polygon([(cx, cy - 0.2 * s), (cx + 0.06 * s, cy - 0.02 * s), (cx + 0.02 * s, cy),
                      (cx + 0.1 * s, cy + 0.2 * s), (cx - 0.04 * s, cy + 0.02 * s), (cx, cy)], fill=pick())
    elif motif == "blobs":
        for _ in range(rng.integers(4, 9)):
            cx, cy = rng.uniform(0.05, 0.95) * s, rng.uniform(0.05, 0.95) * s
            n = 10
            pts = [(cx + math.cos(a) * s * rng.uniform(0.03, 0.09), cy + math.sin(a) * s * rng.uniform(0.03, 0.09))
                   for a in np.linspace(0, 2 * math.pi, n, endpoint=False)]
            draw.polygon(pts, fill=pick())
    elif motif == "spikes":
        for _ in range(rng.integers(4, 9)):
            x = rng.uniform(0, s)
            w, h = rng.uniform(0.02, 0.06) * s, rng.uniform(0.3, 0.7) * s
            base = s if rng.random() < 0.6 else 0
            tip = s - h if base == s else h
            draw.polygon([(x - w, base), (x + w, base), (x + rng.uniform(-w, w), tip)], fill=pick())
    elif motif == "rain":
        for _ in range(rng.integers(25, 50)):
            x, y = rng.uniform(0, s), rng.uniform(0, s)
            draw.line([x, y, x - 2, y + s * 0.08], fill=pick(), width=1)
        x, y = rng.uniform(0.2, 0.8) * s, 0.15 * s  # a grey cloud
        draw.ellipse([x - 0.2 * s, y - 0.07 * s, x + 0.2 * s, y + 0.07 * s], fill=(120, 125, 135))
    else:  # pragma: no cover - STYLES and this function are edited together
        raise ValueError(f"unknown motif {motif!r}")


def _draw_face(draw: ImageDraw.ImageDraw, rng, size: int, expression: str) -> None:
    s = size
    r = rng.uniform(0.16, 0.24) * s
    cx, cy = rng.uniform(r + 2, s - r - 2), rng.uniform(r + 2, s - r - 2)
    skin = {"angry": (235, 150, 120), "disgust": (200, 210, 150)}.get(expression, (245, 210, 170))
    draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=_jitter(rng, skin, 10), outline=(60, 40, 30))
    ex, ey = 0.38 * r, -0.2 * r
    eye_r = {"fear": 0.2, "surprise": 0.17}.get(expression, 0.1) * r
    for side in (-1, 1):
        x, y = cx + side * ex, cy + ey
        if expression in ("fear", "surprise"):
            draw.ellipse([x - eye_r, y - eye_r, x + eye_r, y + eye_r], fill=(255, 255, 255), outline=(0, 0, 0))
            draw.ellipse([x - eye_r / 3, y - eye_r / 3, x + eye_r / 3, y + eye_r / 3], fill=(0, 0, 0))
        elif expression == "disgust":
            draw.line([x - eye_r * 1.5, y, x + eye_r * 1.5, y], fill=(0, 0, 0), width=2)
        else:
            draw.ellipse([x - eye_r, y - eye_r, x + eye_r, y + eye_r], fill=(20, 20, 20))
        # Brows: inner end down for anger, inner end up for sadness and fear, high for surprise.
        by = y - 0.3 * r
        inner, outer = cx + side * 0.15 * r, cx + side * 0.55 * r
        tilt = {"angry": 0.15, "sad": -0.12, "fear": -0.1, "surprise": -0.02, "disgust": 0.08}.get(expression, 0.0) * r
        lift = 0.12 * r if expression in ("surprise", "fear") else 0.0
        draw.line([inner, by + tilt - lift, outer, by - tilt - lift], fill=(40, 25, 15), width=max(1, int(r * 0.08)))
    my, mw = cy + 0.45 * r, 0.45 * r
    width = max(1, int(r * 0.08))
    if expression == "happy":
        draw.arc([cx - mw, my - 0.35 * r, cx + mw, my + 0.2 * r], 10, 170, fill=(120, 20, 20), width=width)
    elif expression == "sad":
        draw.arc([cx - mw, my - 0.05 * r, cx + mw, my + 0.5 * r], 200, 340, fill=(80, 20, 20), width=width)
        draw.ellipse([cx + ex - 2, cy + ey + 0.2 * r, cx + ex + 2, cy + ey + 0.35 * r], fill=(80, 140, 255))
    elif expression == "angry":
        draw.line([cx - mw, my + 0.05 * r, cx + mw, my - 0.05 * r], fill=(90, 0, 0), width=width + 1)
    elif expression in ("fear", "surprise"):
        h = 0.22 * r if expression == "fear" else 0.18 * r
        draw.ellipse([cx - 0.16 * r, my - h, cx + 0.16 * r, my + h], fill=(40, 0, 0))
    elif expression == "disgust":
        pts = [(cx - mw + k * mw / 3, my + (0.06 * r if k % 2 else -0.06 * r)) for k in range(7)]
        draw.line(pts, fill=(70, 60, 10), width=width)


def render(spec: SynthSpec, size: int, rng: np.random.Generator) -> Image.Image:
    """Draw one image from a spec."""
    bg = STYLES[spec.background]["bg"]
    img = _gradient(size, _jitter(rng, bg[0]), _jitter(rng, bg[1]))
    draw = ImageDraw.Draw(img)
    motif = STYLES[spec.motif]
    _draw_motif(draw, rng, size, motif["motif"], motif["colors"])
    if spec.face is not None:
        _draw_face(draw, rng, size, spec.expression)
    # Sensor-like noise so that no two images of a class share exact pixels.
    arr = np.asarray(img).astype(np.int16) + rng.normal(0, 6, (size, size, 3)).astype(np.int16)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def measure_brightness(img: Image.Image) -> float:
    """Mean luma in [0, 1], rounded to EmoSet's 0.1 steps."""
    luma = np.asarray(img.convert("L"), dtype=np.float64) / 255.0
    return round(float(luma.mean()), 1)


def measure_colorfulness(img: Image.Image) -> float:
    """Hasler & Süsstrunk (2003) colorfulness, scaled so 150 (very colourful) maps to 1.0, in 0.1 steps."""
    rgb = np.asarray(img.convert("RGB"), dtype=np.float64)
    rg = rgb[..., 0] - rgb[..., 1]
    yb = 0.5 * (rgb[..., 0] + rgb[..., 1]) - rgb[..., 2]
    metric = math.hypot(rg.std(), yb.std()) + 0.3 * math.hypot(rg.mean(), yb.mean())
    return round(min(metric / 150.0, 1.0), 1)


def _other(rng, emotion: str) -> str:
    others = [e for e in EMOTIONS if e != emotion]
    return others[int(rng.integers(len(others)))]


def sample_spec(rng: np.random.Generator, label: str, ambiguity: float, label_noise: float,
                face_prob: float) -> SynthSpec:
    """Choose the cue sources for an image recorded as ``label``."""
    drawn = _other(rng, label) if rng.random() < label_noise else label
    sources = dict.fromkeys(CUE_GROUPS, drawn)
    if rng.random() < ambiguity:
        sources[CUE_GROUPS[int(rng.integers(len(CUE_GROUPS)))]] = _other(rng, drawn)
    face = sources["face"] if rng.random() < face_prob else None
    expression = None
    if face is not None:
        faces = STYLES[face]["face"]
        expression = faces[int(rng.integers(len(faces)))]
    return SynthSpec(label=label, background=sources["background"], motif=sources["motif"], face=face,
                     expression=expression)


def _annotation(spec: SynthSpec, image_id: str, img: Image.Image, rng) -> dict:
    """Annotation with EmoSet's fields; scenes/objects come from the drawn emotion's pools."""
    style = STYLES[spec.motif]
    ann: dict = {"image_id": image_id, "emotion": spec.label,
                 "brightness": measure_brightness(img), "colorfulness": measure_colorfulness(img)}
    if rng.random() < 0.85:  # any attribute can be missing, as in EmoSet
        ann["scene"] = style["scenes"][int(rng.integers(len(style["scenes"])))]
    if rng.random() < 0.9:
        k = int(rng.integers(1, 4))
        ann["object"] = sorted(rng.choice(style["objects"], size=k, replace=False).tolist())
    if spec.face is not None:
        ann["facial_expression"] = spec.expression
        if rng.random() < 0.5:
            actions = STYLES[spec.face]["actions"]
            ann["human_action"] = actions[int(rng.integers(len(actions)))]
    return ann


def split_counts(n: int, fractions: tuple[float, float, float]) -> dict[str, int]:
    """Images per class in each split for ``n`` images in total (class-balanced; rounded down)."""
    per_class = n // len(EMOTIONS)
    val = int(round(per_class * fractions[1]))
    test = int(round(per_class * fractions[2]))
    return {"train": per_class - val - test, "val": val, "test": test}


def existing_counts(cfg: SynthConfig) -> dict[str, int] | None:
    """Counts of a finished synthetic dataset at ``cfg.out`` made with exactly ``cfg``, else None."""
    from factory import config as config_lib

    out = Path(cfg.out)
    marker = out / config_lib.CONFIG_FILENAME
    if not marker.is_file():
        return None
    import yaml

    saved, now = yaml.safe_load(marker.read_text()), config_lib.to_dict(cfg)
    if {k: v for k, v in saved.items() if k != "out"} != {k: v for k, v in now.items() if k != "out"}:
        return None  # (where it lies is not how it was made: a moved or copied dataset still matches)
    return {s: len(json.loads((out / f"{s}.json").read_text())) for s in ("train", "val", "test")}


def generate(cfg: SynthConfig, progress: bool = False, overwrite: bool = False) -> dict[str, int]:
    """Write a synthetic EmoSet to ``cfg.out``; return the number of images per split.

    The folder is built under ``<out>.tmp`` and renamed at the end, so an interrupted run never leaves a
    half-written dataset where a complete one is expected. The resolved config is saved inside; rerunning
    with the same config reuses the finished dataset. An existing folder is replaced only if it is an
    earlier synthetic dataset and ``overwrite`` is set: nothing else on disk is ever deleted.
    """
    from factory import config as config_lib
    from factory.errors import DataError

    if not cfg.out:
        raise DataError("no output folder given for the synthetic dataset (out=...)")
    out = Path(cfg.out)
    done = existing_counts(cfg)
    if done is not None:
        return done
    if out.exists() and any(out.iterdir()):
        if not (out / config_lib.CONFIG_FILENAME).is_file():
            raise DataError(f"{out} exists and is not a synthetic EmoSet written by svlm; refusing to overwrite it")
        if not overwrite:
            raise DataError(f"{out} holds a synthetic EmoSet made with other settings; "
                            f"pass --overwrite to replace it or choose another --out")
    seed, image_size, jpeg_quality = cfg.seed, cfg.image_size, cfg.jpeg_quality
    ambiguity, label_noise, face_prob = cfg.ambiguity, cfg.label_noise, cfg.face_prob
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    counts = split_counts(cfg.n, tuple(cfg.fractions))
    info = resources.files("factory.data")
    tmp.mkdir(parents=True)
    (tmp / "info.json").write_text(info.joinpath("info.json").read_text())
    (tmp / "NOTICE.md").write_text(info.joinpath("NOTICE.md").read_text())
    jobs = []
    for ci, emotion in enumerate(EMOTIONS):
        k = 0
        for split in ("train", "val", "test"):
            for _ in range(counts[split]):
                jobs.append((split, ci, emotion, k))
                k += 1
    if progress:
        from tqdm import tqdm

        jobs_iter = tqdm(jobs, desc="synthesizing EmoSet", unit="img")
    else:
        jobs_iter = jobs
    split_entries: dict[str, list] = {s: [] for s in counts}
    for split, ci, emotion, k in jobs_iter:
        rng = np.random.default_rng([seed, ci, k])
        image_id = f"{emotion}_{k:05d}"
        spec = sample_spec(rng, emotion, ambiguity, label_noise, face_prob)
        img = render(spec, image_size, rng)
        img_rel, ann_rel = f"image/{emotion}/{image_id}.jpg", f"annotation/{emotion}/{image_id}.json"
        (tmp / img_rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp / ann_rel).parent.mkdir(parents=True, exist_ok=True)
        img.save(tmp / img_rel, quality=jpeg_quality)
        with Image.open(tmp / img_rel) as saved:  # measure what a reader will see, after JPEG
            ann = _annotation(spec, image_id, saved.convert("RGB"), rng)
        (tmp / ann_rel).write_text(json.dumps(ann))
        split_entries[split].append([emotion, image_id, img_rel, ann_rel])
    for split, entries in split_entries.items():
        (tmp / f"{split}.json").write_text(json.dumps(entries))
    config_lib.save(cfg, tmp)
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return {split: len(entries) for split, entries in split_entries.items()}
