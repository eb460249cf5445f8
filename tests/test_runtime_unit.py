"""The torch-free runtime on a toy package (``toy_package.py``, real onnxruntime graphs, built in a second):
sampling on fixed logits, streaming during generation, label scores against a cache-free recomputation,
the image reaching the decoder, stopping, timings, and damaged packages. The same behaviour on exported
tiny models is tested in ``test_export.py``; these tests also serve the mutation run (seconds, no training)."""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from factory.prompts import EMOTIONS
from svlm_runtime.package import Generation, Package, PackageError, read_manifest

from toy_package import EOS, IMAGE_SLOTS, SCRIPT, build_toy_package

pick = Package._pick


@pytest.fixture(scope="module")
def toy_dir(tmp_path_factory):
    return build_toy_package(tmp_path_factory.mktemp("toy") / "pkg")


@pytest.fixture(scope="module")
def toy(toy_dir):
    return Package(toy_dir)


def _image(value: int = 100, size=(30, 20)) -> Image.Image:
    return Image.fromarray(np.full((size[1], size[0], 3), value, np.uint8))


# --- sampling on fixed logits ----------------------------------------------------------------------------
def _frequencies(logits, temperature, top_p, n=20000, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    picks = [pick(np.asarray(logits, np.float64), temperature, top_p, rng) for _ in range(n)]
    return np.bincount(picks, minlength=len(logits)) / n


P4 = np.array([0.5, 0.3, 0.15, 0.05])


def test_greedy_takes_the_argmax_and_draws_nothing():
    rng = np.random.default_rng(0)
    state = rng.bit_generator.state
    assert pick(np.log([0.1, 0.6, 0.3]), 0.0, 1.0, rng) == 1
    assert pick(np.log([0.1, 0.6, 0.3]), -1.0, 0.5, rng) == 1
    assert rng.bit_generator.state == state


def test_sampling_frequencies_follow_the_softmax():
    freq = _frequencies(np.log(P4), 1.0, 1.0)
    assert np.abs(freq - P4).max() < 0.015, freq


@pytest.mark.parametrize("temperature", [0.5, 2.0])
def test_temperature_divides_the_logits(temperature):
    want = P4 ** (1 / temperature)
    want /= want.sum()
    freq = _frequencies(np.log(P4), temperature, 1.0)
    assert np.abs(freq - want).max() < 0.015, (freq, want)


@pytest.mark.parametrize("top_p,kept", [(0.45, 1), (0.55, 2), (0.79, 2), (0.81, 3), (0.96, 4), (1.0, 4)])
def test_top_p_keeps_the_smallest_set_that_reaches_it_and_never_samples_the_tail(top_p, kept):
    freq = _frequencies(np.log(P4), 1.0, top_p, n=8000)
    assert (freq[kept:] == 0).all(), f"sampled outside the top-{kept} set: {freq}"
    want = P4[:kept] / P4[:kept].sum()
    assert np.abs(freq[:kept] - want).max() < 0.02, (freq, want)


def test_top_p_ranks_by_probability_not_by_position():
    logits = np.log([0.05, 0.15, 0.5, 0.3])  # the same distribution, shuffled
    freq = _frequencies(logits, 1.0, 0.55, n=8000)
    assert freq[0] == freq[1] == 0 and abs(freq[2] - 0.625) < 0.02 and abs(freq[3] - 0.375) < 0.02


def test_a_tiny_top_p_is_greedy_at_any_temperature():
    logits = np.log([0.2, 0.45, 0.35])
    assert set(_frequencies(logits, 5.0, 1e-9, n=500)) and _frequencies(logits, 5.0, 1e-9, n=500)[1] == 1.0


def test_sampling_follows_the_seed():
    draw = lambda seed: [pick(np.zeros(50), 1.0, 1.0, rng) for rng in [np.random.default_rng(seed)] for _ in range(30)]
    assert draw(3) == draw(3) and draw(3) != draw(4)


# --- generation ------------------------------------------------------------------------------------------
def test_greedy_answer_follows_the_script_and_stops_at_the_end_token(toy):
    gen = toy.generate(_image(), max_new_tokens=100)
    assert gen.text == SCRIPT and gen.label == "awe" and gen.well_formed and gen.stopped == "eos"
    assert len(gen.token_ids) == len(SCRIPT) and toy.tokenizer.token_to_id(EOS) not in gen.token_ids
    assert toy.decode(gen.token_ids) == SCRIPT and toy.encode(SCRIPT) == gen.token_ids


def test_generation_stops_at_max_new_tokens(toy):
    gen = toy.generate(_image(), max_new_tokens=9)
    assert gen.text == SCRIPT[:9] and len(gen.token_ids) == 9 and gen.stopped == "length"
    assert gen.label is None and not gen.well_formed


def test_text_streams_token_by_token_during_generation(toy):
    """Every decoded character is handed to ``on_text`` as soon as it exists, not once at the end."""
    calls = []
    real = toy.decoder

    class Counting:
        def __getattr__(self, name):
            return getattr(real, name)

        def run(self, *args, **kwargs):
            calls.append(None)
            return real.run(*args, **kwargs)

    chunks, seen_at = [], []

    def on_text(piece):
        chunks.append(piece)
        seen_at.append(len(calls))

    toy.decoder = Counting()
    try:
        gen = toy.generate(_image(), max_new_tokens=100, on_text=on_text)
    finally:
        toy.decoder = real
    assert "".join(chunks) == gen.text == SCRIPT
    assert len(chunks) == len(SCRIPT)  # one character per token with this tokenizer
    # the k-th chunk arrives after the prefill and k-1 decode steps, long before the last one
    assert seen_at == list(range(1, len(SCRIPT) + 1))


def test_sampling_with_temperature_and_top_p(toy):
    image = _image()
    hot = [toy.generate(image, max_new_tokens=12, temperature=8.0, seed=s, label_probs=False).token_ids
           for s in (1, 1, 2)]
    assert hot[0] == hot[1] != hot[2]  # seeded, and really sampled
    assert hot[0][:12] != toy.encode(SCRIPT)[:12]
    narrow = toy.generate(image, max_new_tokens=12, temperature=8.0, top_p=1e-6, seed=2, label_probs=False)
    assert narrow.text == SCRIPT[:12]  # top_p that keeps one token is greedy


def test_the_image_reaches_the_decoder(toy):
    dark, light = (toy.vision.run(None, {"pixel_values": toy.pixel_values(_image(v))})[0] for v in (20, 230))
    assert dark.shape == (1, IMAGE_SLOTS, 16) and not np.allclose(dark, light)
    (a, _), (b, _) = toy.prefill(dark, all_logits=True), toy.prefill(light, all_logits=True)
    assert a.shape[1] == len(toy.prompt_ids) and not np.allclose(a[0, -1], b[0, -1])
    # the features land in the image slots: zero features equal a prompt whose slots hold zeros
    zero, _ = toy.prefill(np.zeros_like(dark))
    embeds = toy.embed.run(None, {"input_ids": toy.prompt_ids[None]})[0]
    embeds[0, toy.prompt_ids == toy.image_token_id] = 0
    n = len(toy.prompt_ids)
    ref, _ = toy._decode(embeds, np.ones((1, n), np.int64), np.arange(n)[None],
                         [np.zeros((1, 1, 0, 16), np.float32)] * 2)
    assert np.allclose(zero, ref, atol=1e-6)
    with pytest.raises(PackageError, match=f"prompt has {IMAGE_SLOTS} image slots, vision gives 3"):
        toy.prefill(dark[:, :3])


def test_pixel_values_can_be_passed_directly(toy):
    image = _image(60)
    pv = toy.pixel_values(image)
    assert pv.shape == (1, 3, 8, 8) and pv.dtype == np.float32
    assert toy.generate(pixel_values=pv, max_new_tokens=5).token_ids == toy.generate(image, max_new_tokens=5).token_ids


# --- batched generation ------------------------------------------------------------------------------------
def _decoder_batches(pkg: Package) -> list[int]:
    """Spy on the decoder: the batch size of every run."""
    seen, run = [], pkg._decode

    def spy(embeds, *args, **kwargs):
        seen.append(embeds.shape[0])
        return run(embeds, *args, **kwargs)

    pkg._decode = spy
    return seen


@pytest.mark.parametrize("max_new_tokens", [100, 9])  # every answer complete / every answer cut
def test_a_batch_gives_each_image_its_own_answer_and_probabilities(toy_dir, max_new_tokens):
    pkg = Package(toy_dir)
    images = [_image(v) for v in (0, 60, 120, 180, 250)]
    alone = [pkg.generate(im, max_new_tokens=max_new_tokens) for im in images]
    batches = _decoder_batches(pkg)
    done: list[int] = []
    together = pkg.generate_batch(images, max_new_tokens=max_new_tokens, batch_size=2, on_batch=done.append)
    assert done == [2, 2, 1] and max(batches) == 8  # label scoring: one row per label
    assert 2 in batches[:3]  # the prefill of the first batch
    for a, b in zip(alone, together, strict=True):
        assert (b.token_ids, b.text, b.stopped, b.label) == (a.token_ids, a.text, a.stopped, a.label)
        assert b.label_probs_forced == a.label_probs_forced
        # log-probabilities: the scripted answer holds nearly all the mass, the rest is ~1e-68
        assert max(abs(math.log(a.label_probs[k]) - math.log(b.label_probs[k])) for k in EMOTIONS) < 1e-3
    # the images really differ to the decoder (else a batch that mixed up its rows would pass)
    assert len({tuple(round(math.log(g.label_probs[k]), 3) for k in EMOTIONS) for g in alone}) == len(images)
    assert {g.stopped for g in alone} == {"eos" if max_new_tokens == 100 else "length"}


def test_batch_size_must_be_positive(toy):
    with pytest.raises(ValueError, match="batch_size"):
        toy.generate_batch([_image()], batch_size=0)


def test_a_batch_dependent_package_decodes_one_image_at_a_time(tmp_path, toy_dir):
    """quantize_dynamic's int8 decoder scales each activation tensor as a whole: packages that say so (or old
    ones made that way) are never batched; the others are."""
    per_tensor = build_toy_package(tmp_path / "q", quantization={"name": "int8", "method": "quantize_dynamic QInt8"})
    for path, invariant in ((per_tensor, False), (toy_dir, True)):
        pkg = Package(path)
        assert pkg.batch_invariant is invariant
        batches = _decoder_batches(pkg)
        done: list[int] = []
        gens = pkg.generate_batch([_image(v) for v in (10, 90, 200)], batch_size=3, label_probs=False,
                                  on_batch=done.append)
        assert len(gens) == 3 and max(batches) == (3 if invariant else 1)
        assert done == ([3] if invariant else [1, 1, 1])
    declared = build_toy_package(tmp_path / "d", quantization={"name": "int8", "method": "MatMulNBits",
                                                                "batch_invariant": False})
    assert Package(declared).batch_invariant is False


def test_workers_run_batches_at_once_with_the_same_results(toy_dir):
    """Two workers on threads give every image the result one worker gives, in order; sampled batches draw
    from the seed and their index, so the worker count does not change them either."""
    import threading

    one, two = Package(toy_dir), Package(toy_dir, workers=2)
    threads, run = set(), two._generate

    def spy(*args, **kwargs):
        threads.add(threading.get_ident())
        return run(*args, **kwargs)

    two._generate = spy
    images = [_image(v) for v in (0, 50, 100, 150, 200, 250)]
    for kwargs in ({}, {"temperature": 1.5, "seed": 3}):
        a = one.generate_batch(images, batch_size=2, max_new_tokens=30, **kwargs)
        b = two.generate_batch(images, batch_size=2, max_new_tokens=30, **kwargs)
        assert [(g.token_ids, g.label_probs) for g in a] == [(g.token_ids, g.label_probs) for g in b]
    assert len(threads) == 2 and threading.get_ident() not in threads
    assert a[0].token_ids != a[1].token_ids  # sampled: a shared draw for both rows would look the same
    cores = len(os.sched_getaffinity(0))
    assert two.decoder.get_session_options().intra_op_num_threads == max(1, cores // 2)
    assert Package(toy_dir, workers=0).workers == cores
    with pytest.raises(ValueError, match="workers"):
        Package(toy_dir, workers=-1)


def test_timings_are_measured_around_the_steps(toy):
    t0 = time.perf_counter()
    gen = toy.generate(_image(), max_new_tokens=100)
    wall = time.perf_counter() - t0
    assert 0 < gen.preprocess_s < gen.ttft_s and 0 < gen.vision_s < gen.ttft_s
    assert gen.preprocess_s + gen.vision_s < gen.ttft_s  # the prefill and first pick come after both
    assert 0 < gen.decode_s and gen.ttft_s + gen.decode_s + gen.label_s <= wall
    assert 0 < gen.label_s
    assert gen.tokens_per_s == pytest.approx((gen.tokens - 1) / gen.decode_s)


def test_tokens_per_second_counts_the_tokens_after_the_first():
    """The end-of-sequence token is a produced token (a decode step made it); a cut answer has none."""
    base = dict(text="", label=None, well_formed=False, ttft_s=0.1)
    assert Generation(token_ids=[1, 2, 3, 4, 5], decode_s=2.0, stopped="length", **base).tokens_per_s == 2.0
    assert Generation(token_ids=[1, 2, 3, 4], decode_s=2.0, stopped="eos", **base).tokens_per_s == 2.0
    assert Generation(token_ids=[1, 2, 3, 4], decode_s=2.0, stopped="eos", **base).tokens == 5
    assert Generation(token_ids=[1], decode_s=1.0, stopped="length", **base).tokens_per_s == 0.0
    assert Generation(token_ids=[1, 2], decode_s=0.0, **base).tokens_per_s == 0.0
    assert Generation(token_ids=[], decode_s=1.0, stopped="length", **base).tokens_per_s == 0.0


# --- label probabilities against a cache-free recomputation ----------------------------------------------
def _oracle_probs(pkg: Package, image, prefix: str) -> dict[str, float]:
    """Each label's ``label</answer>`` scored after prompt + prefix by one full forward pass, no cache."""
    features = pkg.vision.run(None, {"pixel_values": pkg.pixel_values(image)})[0]
    context = [*pkg.prompt_ids.tolist(), *pkg.encode(prefix)]
    sums = {}
    for label in pkg.labels:
        target = pkg.encode(label + "</answer>")
        ids = np.asarray([context + target], np.int64)
        embeds = pkg.embed.run(None, {"input_ids": ids})[0]
        embeds[0, ids[0] == pkg.image_token_id] = features[0]
        n = ids.shape[1]
        logits, _ = pkg._decode(embeds, np.ones((1, n), np.int64), np.arange(n)[None],
                                [np.zeros((1, 1, 0, 16), np.float32)] * 2, np.arange(n))
        z = logits[0, len(context) - 1:-1].astype(np.float64)
        logp = z - np.log(np.exp(z - z.max(-1, keepdims=True)).sum(-1, keepdims=True)) - z.max(-1, keepdims=True)
        sums[label] = float(logp[np.arange(len(target)), target].sum())
    top = max(sums.values())
    total = math.log(sum(math.exp(v - top) for v in sums.values())) + top
    return {label: v - total for label, v in sums.items()}  # log-probabilities


@pytest.mark.parametrize("max_new_tokens,prefix,forced", [
    (100, "<think>grey sky</think><answer>", False),  # the model's own answer
    (10, "<think>gre</think><answer>", True),  # cut by the length: scored after the reasoning + a bridge
    (8, "<think>g</think><answer>", True),
])
def test_label_probabilities_equal_a_cache_free_recomputation(toy, max_new_tokens, prefix, forced):
    for value in (40, 210):
        image = _image(value)
        gen = toy.generate(image, max_new_tokens=max_new_tokens)
        assert gen.label_probs_forced is forced and list(gen.label_probs) == list(EMOTIONS)
        assert sum(gen.label_probs.values()) == pytest.approx(1.0, abs=1e-9)
        want = _oracle_probs(toy, image, prefix)
        got = {k: math.log(v) for k, v in gen.label_probs.items()}
        assert max(abs(got[k] - want[k]) for k in want) < 1e-3, (got, want)


def test_label_only_packages_force_after_the_answer_tag(tmp_path):
    pkg = Package(build_toy_package(tmp_path / "label", style="label", script="<answer>fear</answer>"))
    assert pkg.style == "label"
    full = pkg.generate(_image(), max_new_tokens=50)
    assert full.label == "fear" and not full.label_probs_forced
    image = _image()
    cut = pkg.generate(image, max_new_tokens=3)
    want = _oracle_probs(pkg, image, "<an<answer>")
    assert cut.label_probs_forced
    assert max(abs(math.log(cut.label_probs[k]) - want[k]) for k in want) < 1e-3


def test_the_decoder_computes_logits_only_where_they_are_needed(toy, monkeypatch):
    """Prefill and each decode step ask for the last position only (the vocabulary projection over the whole
    prompt was a quarter of a real model's prefill); the compare path can still ask for all of them."""
    seen = []
    run = toy.decoder.run

    def spy(names, feed):
        out = run(names, feed)
        seen.append((feed["inputs_embeds"].shape[1], feed["logits_to_keep"].tolist(), out[0].shape[1]))
        return out

    monkeypatch.setattr(toy, "decoder", SimpleNamespace(run=spy))
    features = toy.vision.run(None, {"pixel_values": toy.pixel_values(_image())})[0]
    last, _ = toy.prefill(features)
    every, _ = toy.prefill(features, all_logits=True)
    toy.generate(_image(), max_new_tokens=4, label_probs=False)
    n = len(toy.prompt_ids)
    assert seen[0] == (n, [n - 1], 1) and seen[1] == (n, list(range(n)), n)
    assert np.array_equal(last[0, 0], every[0, -1])
    assert seen[2] == (n, [n - 1], 1) and all(step == (1, [0], 1) for step in seen[3:]) and len(seen) == 3 + 4


def test_a_package_without_logits_to_keep_gives_the_same_results(toy, tmp_path):
    """Packages exported before the decoder took logits_to_keep still run, with the same tokens and
    probabilities (the runtime slices their full logits itself)."""
    old = Package(build_toy_package(tmp_path / "old", logits_to_keep=False))
    assert not old.keeps_logits and toy.keeps_logits
    for max_new_tokens in (100, 10):
        a, b = toy.generate(_image(), max_new_tokens=max_new_tokens), old.generate(_image(), max_new_tokens=max_new_tokens)
        assert a.token_ids == b.token_ids and a.label_probs_forced == b.label_probs_forced
        assert max(abs(a.label_probs[k] - b.label_probs[k]) for k in a.label_probs) < 1e-6


def test_label_scoring_can_be_skipped(toy):
    gen = toy.generate(_image(), max_new_tokens=100, label_probs=False)
    assert gen.label_probs == {} and not gen.label_probs_forced and gen.label_s < 0.05


# --- the package itself ----------------------------------------------------------------------------------
def test_a_package_describes_itself(toy, toy_dir):
    assert toy.name == "toy_stage onnx-fp32" and toy.labels == list(EMOTIONS) and toy.style == "cot"
    assert toy.eos_ids == {toy.tokenizer.token_to_id(EOS)} and toy.past_names == ["past.0.key", "past.0.value"]
    assert read_manifest(toy_dir) == json.loads((toy_dir / "manifest.json").read_text())
    assert toy.decoder.get_providers() == ["CPUExecutionProvider"]
    one = Package(toy_dir, threads=1)
    assert one.decoder.get_session_options().intra_op_num_threads == 1


def test_a_package_without_a_stage_or_style_has_defaults(tmp_path, toy_dir):
    pkg = tmp_path / "p"
    shutil.copytree(toy_dir, pkg)
    manifest = json.loads((pkg / "manifest.json").read_text())
    manifest["source"] = {}
    (pkg / "manifest.json").write_text(json.dumps(manifest))
    loaded = Package(pkg)
    assert loaded.name == "model onnx-fp32" and loaded.style == "cot"


def _edit(pkg, **changes):
    manifest = json.loads((pkg / "manifest.json").read_text())
    (pkg / "manifest.json").write_text(json.dumps({**manifest, **changes}))


def _edit_files(pkg, change):
    manifest = json.loads((pkg / "manifest.json").read_text())
    change(manifest)
    (pkg / "manifest.json").write_text(json.dumps(manifest))


def _same_size_other_bytes(f):
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0xFF
    f.write_bytes(bytes(data))


def _outside_graph(pkg):
    """A graph outside the package, listed with its true size and hash: only the path rule can refuse it."""
    evil = pkg.parent / "outside"
    evil.mkdir()
    shutil.copy(pkg / "decoder.onnx", evil / "evil.onnx")

    def point(m):
        m["graphs"]["decoder"] = "../outside/evil.onnx"
        m["files"]["../outside/evil.onnx"] = dict(m["files"]["decoder.onnx"])
    _edit_files(pkg, point)


@pytest.mark.parametrize("damage,message", [
    (lambda p: shutil.rmtree(p), "no package at"),
    (lambda p: (p / "manifest.json").unlink(), "manifest.json is missing"),
    (lambda p: (p / "manifest.json").write_text("{"), "corrupted"),
    (lambda p: (p / "manifest.json").write_bytes(b'{"format_version": 2, "x": "\xff"}'), "corrupted: .*utf-8"),
    (lambda p: (p / "manifest.json").write_text("[1, 2]"), "corrupted: not a JSON object"),
    (lambda p: _edit(p, format_version=3), "format_version 3, this runtime reads 1, 2"),
    (lambda p: _edit_files(p, lambda m: m.pop("tokens")), "lacks tokens"),
    (lambda p: _edit_files(p, lambda m: m["graphs"].pop("embed")), "graphs must name vision, embed, decoder"),
    (lambda p: _edit_files(p, lambda m: m.pop("files")), "lacks files"),
    (lambda p: _edit_files(p, lambda m: m["files"].pop("decoder.onnx")),
     r"decoder.onnx not listed in files \(unverified content\)"),
    (lambda p: _edit_files(p, lambda m: m["files"].pop("tokenizer.json")), "tokenizer.json not listed in files"),
    (_outside_graph, r"graph decoder '../outside/evil.onnx' is not a file name inside the package"),
    (lambda p: _edit_files(p, lambda m: m.update(tokenizer="/etc/hostname")),
     "tokenizer '/etc/hostname' is not a file name inside the package"),
    (lambda p: _edit_files(p, lambda m: m["files"].update({"../../etc/hostname": {"bytes": 1, "sha256": "0"}})),
     r"file '../../etc/hostname' is not a file name inside the package"),
    (lambda p: _edit_files(p, lambda m: m["files"]["embed.onnx"].pop("sha256")), "needs bytes and sha256"),
    (lambda p: (p / "decoder.onnx").unlink(), "incomplete: decoder.onnx is missing"),
    (lambda p: (p / "embed.onnx").write_bytes((p / "embed.onnx").read_bytes()[:-1]),
     r"embed.onnx has \d+ bytes, the manifest says \d+ \(truncated or replaced\)"),
    (lambda p: _same_size_other_bytes(p / "tokenizer.json"),
     r"tokenizer.json does not match its sha256 in the manifest \(damaged or altered\)"),    (lambda p: _edit(p, answer={"think": ["<think>", "</think>"], "answer": ["<answer>", "</answer>"],
                                "rule": "json-object"}), "answer rule 'json-object' is unknown to this runtime"),
    (lambda p: _edit(p, answer={"think": ["<think>"], "answer": ["<answer>", "</answer>"]}),
     "think and answer must each be two non-empty tags"),
    (lambda p: _edit(p, answer=["<answer>"]), "answer must be an object"),
    (lambda p: _edit(p, labels=["awe", "Awe"]), "labels must be distinct non-empty strings"),
])
def test_damaged_packages_are_refused_clearly(tmp_path, toy_dir, damage, message):
    pkg = tmp_path / "pkg"
    shutil.copytree(toy_dir, pkg)
    damage(pkg)
    with pytest.raises(PackageError, match=message):
        Package(pkg)


# --- the answer format travels in the manifest ---------------------------------------------------------------
BRACKETS = {"think": ["[r]", "[/r]"], "answer": ["[a]", "[/a]"], "rule": "last-answer-block"}


def test_answers_are_parsed_and_scored_with_the_manifests_tags(tmp_path):
    script = "[r]grey sky[/r][a]awe[/a]"
    own = Package(build_toy_package(tmp_path / "own", script=script, answer=BRACKETS)).generate(_image())
    assert own.text == script and own.label == "awe" and own.well_formed and not own.label_probs_forced
    assert max(own.label_probs, key=own.label_probs.get) == "awe"
    # the same text under the default tags holds no answer: the tags are the manifest's, not built in
    default = Package(build_toy_package(tmp_path / "default", script=script)).generate(_image())
    assert default.label is None and default.label_probs_forced


def test_a_package_without_an_answer_section_uses_the_default_format(tmp_path, toy_dir, toy):
    pkg = tmp_path / "pkg"
    shutil.copytree(toy_dir, pkg)
    _edit_files(pkg, lambda m: m.pop("answer"))
    old, new = Package(pkg).generate(_image()), toy.generate(_image())
    assert (old.label, old.well_formed, old.label_probs) == (new.label, new.well_formed, new.label_probs) == \
        ("awe", True, new.label_probs)


def test_hashing_can_be_skipped_and_then_the_graph_loader_refuses_a_damaged_graph(tmp_path, toy_dir):
    pkg = tmp_path / "pkg"
    shutil.copytree(toy_dir, pkg)
    (pkg / "vision.onnx").write_bytes(b"x" * (pkg / "vision.onnx").stat().st_size)
    with pytest.raises(PackageError, match="vision.onnx does not match its sha256"):
        read_manifest(pkg)
    assert read_manifest(pkg, verify=False)["graphs"]["vision"] == "vision.onnx"
    with pytest.raises(PackageError, match="a graph does not load"):
        Package(pkg, verify=False)


def test_a_format_1_package_is_read_with_sizes_only(tmp_path, toy_dir):
    """Packages exported before sha256 was listed (format 1) still load; their sizes are still checked."""
    pkg = tmp_path / "pkg"
    shutil.copytree(toy_dir, pkg)

    def to_v1(m):
        m["format_version"] = 1
        for info in m["files"].values():
            info.pop("sha256")
    _edit_files(pkg, to_v1)
    _same_size_other_bytes(pkg / "tokenizer.json")  # undetectable without hashes: the reason for format 2
    assert read_manifest(pkg)["format_version"] == 1
    (pkg / "embed.onnx").write_bytes(b"")
    with pytest.raises(PackageError, match="truncated or replaced"):
        read_manifest(pkg)


def test_a_damaged_package_is_one_line_and_exit_2_from_the_cli(tmp_path, toy_dir, synth_root, capsys):
    from factory.cli import main

    pkg = tmp_path / "pkg"
    shutil.copytree(toy_dir, pkg)
    _same_size_other_bytes(pkg / "decoder.onnx")
    code = main(["bench", "accuracy", "--models", str(pkg), "--data", str(synth_root), "--limit", "2", "-q",
                 "--out", str(tmp_path / "bench")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("svlm: error: ") and "decoder.onnx does not match its sha256" in err
    assert "Traceback" not in err and err.count("\n") == 1


def test_sessions_get_the_threads_the_providers_and_quiet_logging(toy_dir, monkeypatch):
    """Every graph's session gets the caller's thread count and providers (default: the CPU provider) and logs
    errors only (onnxruntime's severity 3)."""
    import onnxruntime as ort

    real, seen = ort.InferenceSession, []

    def spy(path, sess_options=None, providers=None):
        seen.append((Path(path).name, sess_options, providers))
        return real(path, sess_options, providers=["CPUExecutionProvider"])

    monkeypatch.setattr(ort, "InferenceSession", spy)
    Package(toy_dir, threads=1)
    assert [name for name, _, _ in seen] == ["vision.onnx", "embed.onnx", "decoder.onnx"]
    assert [providers for _, _, providers in seen] == [["CPUExecutionProvider"]] * 3
    assert all(o.intra_op_num_threads == 1 and o.log_severity_level == 3 for _, o, _ in seen)
    seen.clear()
    Package(toy_dir, providers=["SomeExecutionProvider"])
    assert [providers for _, _, providers in seen] == [["SomeExecutionProvider"]] * 3
    assert all(o.intra_op_num_threads == 0 and o.log_severity_level == 3 for _, o, _ in seen)


def test_low_memory_turns_off_the_arena_and_the_memory_plan_and_changes_no_token(toy_dir, toy, monkeypatch,
                                                                                  tmp_path):
    """``low_memory`` is onnxruntime's arena and memory pattern off in every session (the default keeps both)
    and glibc's mmap threshold lowered, with the same generation; the latency benchmark passes it on and labels
    its row. (The mallopt call is recorded, not made: it would change this whole test process's malloc.)"""
    import onnxruntime as ort

    import svlm_runtime.package as package
    from benchmarks.latency import markdown, measure_one

    lowered = []
    monkeypatch.setattr(package, "_mmap_large_allocations", lambda: lowered.append(1) or True)
    real, seen = ort.InferenceSession, []

    def spy(path, sess_options=None, providers=None):
        seen.append(sess_options)
        return real(path, sess_options, providers=providers)

    monkeypatch.setattr(ort, "InferenceSession", spy)
    lean = Package(toy_dir, low_memory=True)
    assert len(seen) == 3 and not any(o.enable_cpu_mem_arena or o.enable_mem_pattern for o in seen)
    assert lowered == [1]
    seen.clear()
    Package(toy_dir)
    assert len(seen) == 3 and all(o.enable_cpu_mem_arena and o.enable_mem_pattern for o in seen) and lowered == [1]
    assert lean.generate(_image(), max_new_tokens=60).token_ids == toy.generate(_image(), max_new_tokens=60).token_ids
    image = tmp_path / "x.png"
    _image().save(image)
    row = measure_one(str(toy_dir), [str(image)], runs=1, warmup=0, threads=1, max_new_tokens=4, low_memory=True)
    assert row["low_memory"] is True and len(seen) == 3 + 3 and not seen[-1].enable_cpu_mem_arena
    table = markdown({"machine": {"cpus": 2, "platform": "x"}, "models": [row]})
    assert f"| {row['model']} (low memory) |" in table


@pytest.mark.skipif("MUTANT_UNDER_TEST" in os.environ, reason="process-level malloc behaviour, not runtime "
                    "logic; mutmut's copies import differently")
def test_large_allocations_are_mmapped_in_a_low_memory_process():
    """In a fresh process (glibc): after the call, a freed 8 MB buffer leaves the resident set at once."""
    import subprocess
    import sys

    code = """
import ctypes
from pathlib import Path
from svlm_runtime.package import _mmap_large_allocations
def rss():
    return int(next(l for l in Path("/proc/self/status").read_text().splitlines() if l.startswith("VmRSS:")).split()[1])
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
def cycle(size):
    p = libc.malloc(size)
    ctypes.memset(p, 1, size)
    before = rss()
    libc.free(ctypes.c_void_p(p))
    return before - rss()
# an mmapped free raises glibc's dynamic thresholds: mmap 30 MiB, heap trim 60 MiB
q = libc.malloc(30 << 20); libc.free(ctypes.c_void_p(q))
heap = cycle(8 << 20)  # 8 MiB from the heap: freeing it keeps it in the process
assert _mmap_large_allocations()
print(heap, cycle(20 << 20))  # more than the heap has free, under 30 MiB: mmapped only after the call
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    heap_kib, mapped_kib = map(int, out)
    assert heap_kib < 1024 and mapped_kib >= 19 * 1024, out  # kept by the heap before; returned (20 MiB) after


def test_no_budget_writes_nothing(toy):
    gen = toy.generate(_image(), max_new_tokens=0)
    assert (gen.text, gen.token_ids, gen.stopped, gen.label) == ("", [], "length", None)


def test_sampling_is_stable_for_large_logits():
    rng = np.random.default_rng(0)
    assert all(pick(np.array([800.0, 0.0, -5.0]), 1.0, 1.0, rng) == 0 for _ in range(20))


def test_top_p_stops_where_the_mass_reaches_it_exactly():
    """Two tokens of probability 0.5 each: top_p 0.5 keeps one of them, never both."""
    picks = {pick(np.log([0.5, 0.5]), 1.0, 0.5, np.random.default_rng(seed)) for seed in range(200)}
    assert len(picks) == 1


def test_special_tokens_the_model_writes_are_neither_shown_nor_streamed_empty(toy_dir):
    """With the end token not treated as one, the toy writes its script and then ``<eos>`` tokens: they add no
    text, and no empty chunk is streamed for them."""
    pkg = Package(toy_dir)
    pkg.eos_ids = set()
    chunks = []
    gen = pkg.generate(_image(), max_new_tokens=len(SCRIPT) + 3, on_text=chunks.append, label_probs=False)
    assert len(gen.token_ids) == len(SCRIPT) + 3 and gen.text == SCRIPT
    assert "".join(chunks) == SCRIPT and all(chunks)


def test_an_unfinished_character_at_the_end_is_streamed_last(toy_dir):
    """A byte-level token can stop inside a character (decoded as U+FFFD); streaming holds it back, and if
    generation ends there it is handed over at the end, so the chunks still join to the text."""
    pkg = Package(toy_dir)
    real = pkg.tokenizer

    class Partial:  # decodes the last script token as an unfinished character
        def decode(self, ids, skip_special_tokens=True):
            text = real.decode(ids, skip_special_tokens=skip_special_tokens)
            return text[:-1] + "\ufffd" if len(ids) == len(SCRIPT) else text

        def __getattr__(self, name):
            return getattr(real, name)

    pkg.tokenizer = Partial()
    chunks = []
    gen = pkg.generate(_image(), max_new_tokens=64, on_text=chunks.append, label_probs=False)
    assert gen.text == SCRIPT[:-1] + "\ufffd" and "".join(chunks) == gen.text and chunks[-1] == "\ufffd"


def test_encode_and_decode_leave_special_tokens_out(toy_dir):
    """Label tokens are encoded without the tokenizer's added tokens, and decoded text skips special ones,
    whatever post-processor the tokenizer has."""
    from tokenizers.processors import TemplateProcessing

    pkg = Package(toy_dir)
    eos = pkg.tokenizer.token_to_id("<eos>")
    pkg.tokenizer.post_processor = TemplateProcessing(single="<eos> $A", special_tokens=[("<eos>", eos)])
    ids = pkg.encode("awe")
    assert len(ids) == 3 and eos not in ids
    assert pkg.decode([eos, *ids, eos]) == "awe"
