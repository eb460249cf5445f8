"""The whole path with each family's real tokenizer: the shipped files and their provenance, CoT parsing, SFT
masking on the batch trl really collates, GRPO rewards on decoded completions, and evaluation.

With a real BPE tokenizer ``<answer>`` is ``<``, ``answer``, ``>`` and a label's tokens depend on what comes
before it; every test here runs on the tiny models of ``conftest.tiny_dirs``, which carry the real files.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path

import pytest

from factory.families import FAMILIES, get_family
from factory.prompts import EMOTIONS, format_answer, parse_answer

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "hf"  # where the originals came from
ASSETS = Path(__file__).resolve().parents[1] / "factory" / "assets" / "hf"
# asset folder -> fixture folder it was copied or derived from
SOURCES = {"qwen2.5-instruct": "qwen2.5-instruct-tokenizer", "internvl3-1b-hf": "internvl3-1b-hf-derived",
           "qwen2-vl-2b-instruct": "qwen2-vl-2b-instruct", "smolvlm-256m-instruct": "smolvlm-256m-instruct"}
needs_fixtures = pytest.mark.skipif(not FIXTURES.is_dir(), reason=f"the original files ({FIXTURES}) are not here")


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- the shipped files ---------------------------------------------------------------------------------
def test_every_family_has_its_real_files_and_provenance_lists_every_file():
    provenance = (ASSETS / "PROVENANCE.md").read_text()
    assert "Apache License" in (ASSETS / "LICENSE").read_text()
    for fam in FAMILIES.values():
        assert (ASSETS / fam.real.assets).is_dir(), f"{fam.name}: no factory/assets/hf/{fam.real.assets}"
    for f in ASSETS.rglob("*"):
        if f.is_file() and f.parent != ASSETS:
            assert f"{f.parent.name}/{f.name}" in provenance, f"PROVENANCE.md does not list {f}"


@needs_fixtures
def test_shipped_files_equal_the_originals_and_derivations_are_exact():
    """Copies are byte-equal (gzip decompresses to the original); InternVL's tokenizer.json, derived from
    Qwen2.5's plus 10 added tokens, saves byte-identical to the original; Qwen2-VL's, derived from Qwen2.5's
    minus 8 added tokens, has exactly the hub's vocab.json, merges.txt and added tokens and encodes the same."""
    from transformers import AutoTokenizer

    from factory import assets
    from factory.tiny import real_parts

    for name, source in SOURCES.items():
        for f in (ASSETS / name).iterdir():
            if f.name == assets.DERIVE:
                continue
            data = gzip.decompress(f.read_bytes()) if f.suffix == ".gz" else f.read_bytes()
            original = FIXTURES / source / f.name.removesuffix(".gz")
            assert _sha(data) == _sha(original.read_bytes()), f
            assert _sha(original.read_bytes())[:16] in (ASSETS / "PROVENANCE.md").read_text(), original
    internvl = real_parts(get_family("internvl")).tokenizer
    out = Path(__import__("tempfile").mkdtemp())
    internvl.save_pretrained(out)
    assert (out / "tokenizer.json").read_bytes() == (FIXTURES / SOURCES["internvl3-1b-hf"] / "tokenizer.json").read_bytes()

    derived = assets.tokenizer_json("qwen2-vl-2b-instruct")
    hub = FIXTURES / SOURCES["qwen2-vl-2b-instruct"]
    assert derived["model"]["vocab"] == json.loads((hub / "vocab.json").read_text())
    merges = [m for m in (hub / "merges.txt").read_text().splitlines() if m and not m.startswith("#version")]
    assert [m if isinstance(m, str) else " ".join(m) for m in derived["model"]["merges"]] == merges
    config = json.loads((hub / "tokenizer_config.json").read_text())["added_tokens_decoder"]
    assert {str(t["id"]): (t["content"], t["special"]) for t in derived["added_tokens"]} == \
        {k: (v["content"], v["special"]) for k, v in config.items()}
    ours, theirs = real_parts(get_family("qwen2vl")).tokenizer, AutoTokenizer.from_pretrained(hub)
    text = [format_answer(e, f"Dark {e} scene, 42 faces ... émotions 感情") for e in EMOTIONS]
    text += ["<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>hi<|im_end|>"]
    for t in text:
        assert ours(t).input_ids == theirs(t).input_ids, t


# --- CoT parsing ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", list(FAMILIES))
def test_answers_tokenize_into_pieces_and_parse_back_after_decoding(family, tiny_processors):
    tok = tiny_processors(family).tokenizer
    for label in EMOTIONS:
        text = format_answer(label, f"The colours suggest {label}.")
        ids = tok(text, add_special_tokens=False).input_ids
        assert len(ids) > len(text.split()) + 4  # the tags are several tokens each
        parsed = parse_answer(tok.decode(ids, skip_special_tokens=True))
        assert parsed.label == label and parsed.well_formed
    # Real BPE merges a label with the ">" before it: a label's tokens depend on the text before it.
    alone = tok("fear", add_special_tokens=False).input_ids
    after_tag = tok("<answer>fear", add_special_tokens=False).input_ids
    assert after_tag[-len(alone):] != alone or family == "smolvlm"


def test_qwen_tokenizer_facts_from_the_issue(tiny_processors):
    tok = tiny_processors("internvl").tokenizer
    pieces = lambda text: tok.convert_ids_to_tokens(tok(text, add_special_tokens=False).input_ids)  # noqa: E731
    assert pieces("<answer>") == ["<", "answer", ">"]
    assert pieces(">fear") == [">f", "ear"] and pieces(">sadness") == [">s", "ad", "ness"]
    assert tok.convert_tokens_to_ids("<IMG_CONTEXT>") == 151667


# --- SFT masking on the batch trl builds ------------------------------------------------------------------
@pytest.mark.parametrize("family", list(FAMILIES))
def test_sft_loss_falls_on_the_answer_and_end_of_turn_only(family, tiny_dirs, synth_root, cot_dir, tmp_path,
                                                           monkeypatch):
    """run_sft's own SFTTrainer collates a batch; token by token, the labels are -100 on the prompt (image
    tokens included) and equal the input ids on exactly the tokens of the assistant turn as the real chat
    template renders it: the answer, the end-of-turn token and what the template puts after it."""
    import torch

    from factory import config as config_lib
    from factory.prompts import build_messages
    from factory.train import sft
    from factory.train.common import StageContext
    from factory.train.runner import TrainConfig

    cfg = config_lib.build(TrainConfig, {"output_dir": str(tmp_path), "name": "m", "data": str(synth_root),
                                         "cot": str(cot_dir), "model": {"source": str(tiny_dirs(family))},
                                         "train": {"stages": {"1_sft": {"batch_size": 3, "max_steps": 1}}}})
    built = {}
    monkeypatch.setattr(sft, "run_trainer", lambda ctx, trainer: built.setdefault("trainer", trainer) and {})
    ctx = StageContext("1_sft", cfg.stage("1_sft"), cfg, tmp_path / "1_sft", str(tiny_dirs(family)), synth_root,
                       cot_dir, progress=False)
    model, processor, _ = sft.run_sft(ctx)
    trainer = built["trainer"]
    batch = next(iter(trainer.get_train_dataloader()))
    tok, fam = processor.tokenizer, get_family(family)
    prompt = processor.apply_chat_template(build_messages("cot"), add_generation_prompt=True)
    completions = set()
    for row in trainer.train_dataset:
        full = processor.apply_chat_template(row["prompt"] + row["completion"])
        assert full.startswith(prompt)
        completions.add(full[len(prompt):])
    image_id = model.config.image_token_id
    for ids, labels, mask in zip(batch["input_ids"], batch["labels"], batch["attention_mask"]):
        scored = labels != -100
        assert torch.equal(labels[scored], ids[scored])
        first = int(scored.nonzero()[0])
        assert scored[first:].eq(mask[first:].bool()).all()  # one block, to the end of the real tokens
        assert not scored[:first].any() and ids[:first].eq(image_id).any()  # the prompt holds the image
        answer = tok.decode(ids[scored])
        assert answer in completions, answer[:80]
        assert ids[scored].tolist() == tok(answer, add_special_tokens=False).input_ids
        assert tok.convert_tokens_to_ids(fam.eos_token) in ids[scored].tolist()  # the model learns to stop
        assert parse_answer(tok.decode(ids[scored], skip_special_tokens=True)).well_formed


# --- GRPO rewards and evaluation --------------------------------------------------------------------------
@pytest.mark.parametrize("family", list(FAMILIES))
def test_grpo_rewards_score_completions_decoded_like_trl(family, tiny_processors):
    """trl 1.16 decodes conversational completions with ``batch_decode(ids, skip_special_tokens=True)`` when
    the tokenizer has no response schema (none of the real ones has)."""
    from factory.rewards import accuracy_reward, format_reward

    tok = tiny_processors(family).tokenizer
    assert getattr(tok, "response_schema", None) is None and getattr(tok, "response_template", None) is None
    eos = tok.convert_tokens_to_ids(get_family(family).eos_token)
    rows = [(format_answer("fear", "Wide eyes, deep shadows."), "fear", 1.0, 1.0),
            (format_answer("fear", "Wide eyes, deep shadows."), "awe", 1.0, 0.0),
            (format_answer("awe") + " and more", "awe", 0.0, 1.0),
            ("<think>Wide eyes</think><answer>fe", "fear", 0.0, 0.0)]
    ids = [tok(text, add_special_tokens=False).input_ids + [eos] for text, *_ in rows]
    completions = [[{"role": "assistant", "content": c}] for c in tok.batch_decode(ids, skip_special_tokens=True)]
    truths = [r[1] for r in rows]
    assert format_reward(completions=completions, label=truths) == [r[2] for r in rows]
    assert accuracy_reward(completions=completions, label=truths) == [r[3] for r in rows]


@pytest.mark.parametrize("family", list(FAMILIES))
def test_evaluation_generates_and_scores_with_the_real_tokenizer(family, tiny_dirs, synth_root):
    from factory.data.emoset import read_split
    from factory.evaluate import generate_answers, score
    from factory.models import load_model

    loaded = load_model(tiny_dirs(family), dtype="float32", device="cpu")
    records = read_split(synth_root, "val", check_images="none").records[:3]
    texts = generate_answers(loaded.model, loaded.processor, [r.image_path for r in records], max_new_tokens=4,
                             batch_size=3)
    assert len(texts) == 3 and all(isinstance(t, str) for t in texts)
    tok = loaded.processor.tokenizer
    right = [tok.decode(tok(format_answer(r.emotion, "x"), add_special_tokens=False).input_ids,
                        skip_special_tokens=True) for r in records]
    result = score(records, right)
    assert result.accuracy == 1.0 and result.format_rate == 1.0


# --- the local CoT teacher: the family's image policy, as load_model applies it ----------------------------
@pytest.mark.parametrize("family", list(FAMILIES))
def test_local_teacher_asks_with_the_family_image_policy(family, tiny_dirs, tmp_path):
    """The local teacher's request carries as many image tokens as load_model's processor makes of the image
    (one tile / one global image / the pixel cap), fewer than the real processor settings would."""
    from types import SimpleNamespace

    import numpy as np
    from PIL import Image
    from transformers import AutoProcessor

    from factory.cot.teachers import LocalTeacher, TeacherConfig
    from factory.models import load_model
    from factory.prompts import render_prompt

    path = tmp_path / "big.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (700, 1100, 3), dtype=np.uint8)).save(path)
    teacher = LocalTeacher(TeacherConfig(name="local", kind="local", model=str(tiny_dirs(family)), max_tokens=2,
                                         temperature=0.0, dtype="float32"))
    loaded = teacher._load()
    seen = {}
    generate = loaded.model.generate
    loaded.model.generate = lambda **kw: seen.setdefault("inputs", kw) and generate(**kw)
    assert isinstance(teacher.respond(SimpleNamespace(image_path=path)), str)
    fam = get_family(family)
    image_id = fam.image_token_id(loaded.processor.tokenizer)
    sent = int((seen["inputs"]["input_ids"] == image_id).sum())

    def tokens(processor):
        out = processor(images=[[Image.open(path).convert("RGB")]], text=[render_prompt(processor)],
                        return_tensors="np")
        return int((out["input_ids"] == image_id).sum())

    assert sent == tokens(load_model(tiny_dirs(family), dtype="float32", device="cpu").processor)
    assert sent < tokens(AutoProcessor.from_pretrained(tiny_dirs(family)))


# --- the runtime streams text that a byte-level tokenizer splits inside a character -------------------------
@pytest.mark.parametrize("family", ["internvl", "smolvlm"])
def test_runtime_streams_characters_split_across_tokens(family, tiny_processors, tmp_path):
    """Qwen2.5's and SmolVLM's byte-level BPE split "感" or "😀" over several tokens, and a prefix of them decodes
    to U+FFFD. The runtime streams only complete characters, so the streamed pieces add up to the final text;
    a generation cut inside a character still streams all of its text. (The toy package's decoder with the
    family's real tokenizer; the decoder's choices are replaced by the scripted tokens.)"""
    import numpy as np

    from svlm_runtime.package import Package
    from toy_package import build_toy_package

    tok = tiny_processors(family).tokenizer.backend_tokenizer
    text = "<think>Dark 感情, 😀 émotions</think><answer>fear</answer>"
    ids = tok.encode(text, add_special_tokens=False).ids
    partial = [k for k in range(1, len(ids)) if tok.decode(ids[:k]).endswith("\ufffd")]
    assert partial  # the script does split characters

    pkg = Package(build_toy_package(tmp_path / "toy"))
    vocab = pkg.tokenizer.get_vocab_size()
    eos = next(iter(pkg.eos_ids))
    assert eos not in ids
    pkg.tokenizer = tok
    embed = pkg.embed

    class Embed:  # the toy's embedding table is small: any id maps onto it
        def run(self, names, feed):
            return embed.run(names, {"input_ids": feed["input_ids"] % vocab})

    pkg.embed = Embed()
    for limit in (len(ids) + 1, partial[0]):
        script = iter([*ids, eos])
        pkg._pick = lambda *args: next(script)
        chunks = []
        gen = pkg.generate(pixel_values=np.zeros((1, 3, 8, 8), np.float32), max_new_tokens=limit,
                           on_text=chunks.append, label_probs=False)
        assert "".join(chunks) == gen.text
        if limit > len(ids):
            assert gen.text == text and gen.label == "fear" and "\ufffd" not in "".join(chunks)
            assert len(chunks) < len(ids)  # a split character waits for its last token
        else:
            assert gen.text.endswith("\ufffd") and gen.stopped == "length"


@pytest.mark.parametrize("family", list(FAMILIES))
def test_one_grpo_step_decodes_and_rewards_real_completions(family, tiny_dirs, synth_root, cot_dir, tmp_path,
                                                            monkeypatch):
    """One step of the GRPO runner (trl's GRPOTrainer) on the real-tokenizer tiny model: trl samples with the
    family's image tokens and end-of-turn id, and the production rewards get each completion as the real
    tokenizer decodes its ids, cut at the end-of-turn token, with the image's emotion."""
    from factory import config as config_lib
    from factory import rewards
    from factory.train import grpo
    from factory.train.common import StageContext
    from factory.train.runner import TrainConfig

    seen = []

    def spying(name):
        def reward(completions, completion_ids, label, **kw):
            seen.append((name, completions, completion_ids, label, kw.get("prompts")))
            return rewards.REWARDS[name](completions=completions, label=label, **kw)
        reward.__name__ = f"{name}_reward"
        return reward

    monkeypatch.setattr(grpo, "get_rewards", lambda names, task=None: [spying(n) for n in names])
    stage = {"parent": None, "rewards": ["format", "accuracy"], "max_steps": 1, "batch_size": 4, "grad_accum": 1,
             "num_generations": 2, "max_completion_length": 8, "save_steps": 1, "logging_steps": 1}
    cfg = config_lib.build(TrainConfig, {"output_dir": str(tmp_path), "name": "g", "data": str(synth_root),
                                         "cot": str(cot_dir), "model": {"source": str(tiny_dirs(family))},
                                         "train": {"lora": {"r": 4, "alpha": 8},
                                                   "stages": {"3_grpo_accuracy": stage}}})
    ctx = StageContext("3_grpo_accuracy", cfg.stage("3_grpo_accuracy"), cfg, tmp_path / "s", str(tiny_dirs(family)),
                       synth_root, cot_dir, progress=False)
    model, processor, _ = grpo.run_grpo(ctx)
    tok, fam = processor.tokenizer, get_family(family)
    eos = tok.convert_tokens_to_ids(fam.eos_token)
    assert eos in set(model.generation_config.eos_token_id if isinstance(model.generation_config.eos_token_id, list)
                      else [model.generation_config.eos_token_id])
    assert {name for name, *_ in seen} == {"format", "accuracy"}
    for name, completions, ids, emotion, _ in seen:
        assert len(completions) == len(ids) == len(emotion) == 4 and set(emotion) <= set(EMOTIONS)
        for completion, row in zip(completions, ids):
            assert completion[0]["role"] == "assistant"
            assert completion[0]["content"] == tok.decode(row, skip_special_tokens=True)
            assert eos not in row[:-1] and 0 < len(row) <= 8  # cut at the end of turn
    history = json.loads((tmp_path / "s" / "log_history.json").read_text())
    assert any("rewards/format_reward/mean" in row for row in history)


def test_local_teacher_of_a_registered_family_never_falls_back_without_its_image_policy(tiny_dirs):
    """A load error of a registered family (here a bad dtype) is reported; it used to be swallowed and the
    model reloaded by the generic fallback, without the family's image policy (7 InternVL tiles, not 1)."""
    from factory.cot.teachers import LocalTeacher, TeacherConfig
    from factory.errors import SVLMError

    teacher = LocalTeacher(TeacherConfig(name="local", kind="local", model=str(tiny_dirs("internvl")),
                                         dtype="bf16"))
    with pytest.raises(SVLMError, match="unknown dtype"):
        teacher._load()
