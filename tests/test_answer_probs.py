"""Answer probabilities with real tokenizers: what is scored (``svlm_runtime.label_scoring``), and the ONNX
runtime and the PyTorch path scoring it alike on a trained tiny model whose answers are peaked."""

from __future__ import annotations

import pytest

from factory.families import FAMILIES
from factory.prompts import EMOTIONS
from svlm_runtime.label_scoring import label_probabilities, plan_label_scoring


def _codec(tok):
    return (lambda text: tok.encode(text, add_special_tokens=False),
            lambda ids: tok.decode(list(ids), skip_special_tokens=True))


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("generated,style,forced,prefix", [
    ("<think>Dark rain.</think><answer>fear</answer>", "cot", False, "<think>Dark rain.</think><answer>"),
    ("<think>Dark rain.</think><answer>sadness</answer>", "cot", False, "<think>Dark rain.</think><answer>"),
    ("<think>Dark rain, a cold", "cot", True, "<think>Dark rain, a cold</think><answer>"),  # cut by the length
    ("<think>Dark rain.</think><answer>gloom</answer>", "cot", True, "<think>Dark rain.</think><answer>"),
    ("<think>Dark rain.<answer>fea", "cot", True, "<think>Dark rain.</think><answer>"),
    ("<answer>awe</answer>", "label", False, "<answer>"),
    ("", "label", True, "<answer>"),
])
def test_every_label_is_scored_in_context_after_the_answer_tag(family, generated, style, forced, prefix,
                                                               tiny_processors):
    """Context + bridge + a label's tokens decode to prefix + label + "</answer>" for every label, the kept
    context is a token prefix of what the model generated, and BPE merges across ">" go to the label."""
    tok = tiny_processors(family).tokenizer
    encode, decode = _codec(tok)
    ids = encode(generated)
    plan = plan_label_scoring(ids, encode, decode, EMOTIONS, style)
    assert plan.forced is forced and list(plan.labels) == list(EMOTIONS)
    for label, tail in plan.labels.items():
        assert decode(ids[:plan.kept] + plan.bridge + tail) == prefix + label + "</answer>"
    assert plan.kept <= len(ids)
    if family != "smolvlm" and not forced:  # Qwen2.5 BPE: ">f" and ">s" merge with the tag's ">"
        assert tok.convert_ids_to_tokens(plan.labels["fear"][:1]) == [">f"]
        assert tok.convert_ids_to_tokens(plan.labels["sadness"][:1]) == [">s"]


def test_probabilities_are_a_softmax_over_the_labels():
    probs = label_probabilities({"awe": -1.0, "fear": -1.0, "anger": -30.0})
    assert abs(sum(probs.values()) - 1) < 1e-12 and probs["awe"] == probs["fear"] > 0.49


# --- the runtime and the PyTorch path on the trained baseline -------------------------------------------
@pytest.fixture(scope="module")
def torch_baseline(baseline_run):
    from factory.inference import TorchModel

    return TorchModel(baseline_run / "0_baseline")


@pytest.fixture(scope="module")
def images(synth_root):
    """Six of the baseline's training images, different emotions: its answers on them are peaked."""
    from PIL import Image

    from factory.data.emoset import read_split

    records = read_split(synth_root, "train", check_images="none").records
    return [Image.open(r.image_path).convert("RGB") for r in records[::len(records) // 6][:6]]


def test_runtime_probabilities_sum_to_one_and_peak_at_the_greedy_label(exported, images):
    from svlm_runtime.package import Package

    out, _ = exported
    pkg = Package(out / "fp32")
    valid = 0
    for image in images:
        gen = pkg.generate(image, max_new_tokens=12)
        assert set(gen.label_probs) == set(EMOTIONS) and abs(sum(gen.label_probs.values()) - 1) < 1e-6
        if gen.label is not None:
            valid += 1
            assert not gen.label_probs_forced
            assert max(gen.label_probs, key=gen.label_probs.get) == gen.label, gen.label_probs
    assert valid >= 5  # the trained baseline answers with labels


@pytest.mark.parametrize("quant", ["fp32", "int8", "int4"])
def test_every_package_answers_the_same_in_a_batch_as_alone(exported, images, quant):
    """Batched decoding (what ``svlm bench accuracy`` runs) must not change any image's answer: rows that stop
    early leave the batch, the others go on; int8 (one activation scale per tensor: per batch) is decoded
    one image at a time, on two workers."""
    from svlm_runtime.package import Package

    out, manifests = exported
    pkg = Package(out / quant, workers=2)
    assert pkg.batch_invariant is manifests[quant]["quantization"]["batch_invariant"] is (quant != "int8")
    alone = [pkg.generate(image, max_new_tokens=12) for image in images]
    together = pkg.generate_batch(images, max_new_tokens=12, batch_size=4)
    assert len({len(g.token_ids) for g in alone}) > 1  # answers of different lengths: rows stop apart
    for a, b in zip(alone, together, strict=True):
        assert (b.token_ids, b.stopped, b.label) == (a.token_ids, a.stopped, a.label)
        assert max(abs(a.label_probs[k] - b.label_probs[k]) for k in EMOTIONS) < 1e-4


def test_a_pytorch_stage_answers_the_same_in_a_batch_as_alone(torch_baseline, images):
    alone = [torch_baseline.generate(image, max_new_tokens=12, label_probs=False) for image in images]
    done: list[int] = []
    together = torch_baseline.generate_batch(images, max_new_tokens=12, batch_size=4, label_probs=False,
                                             on_batch=done.append)
    assert done == [4, 2] and len({len(g.token_ids) for g in alone}) > 1
    assert [(g.token_ids, g.stopped, g.label) for g in together] == [(g.token_ids, g.stopped, g.label) for g in alone]
    assert all(g.ttft_s > 0 and g.decode_s > 0 and g.tokens == len(g.token_ids) + 1 for g in alone)


def test_an_answerless_completion_is_scored_forced(exported, images):
    from svlm_runtime.package import Package

    out, _ = exported
    gen = Package(out / "fp32").generate(images[0], max_new_tokens=2)  # "<", "answer": no label yet
    assert gen.label is None and gen.label_probs_forced
    assert set(gen.label_probs) == set(EMOTIONS) and abs(sum(gen.label_probs.values()) - 1) < 1e-6


@pytest.mark.parametrize("max_new_tokens", [12, 2])
def test_pytorch_and_onnx_probabilities_agree(exported, torch_baseline, images, max_new_tokens):
    """The same generated ids scored by the ONNX runtime (KV cache, batched labels) and by PyTorch (one
    batched forward pass) give the same probabilities, for a valid answer and a forced one."""
    from svlm_runtime.package import Package

    out, _ = exported
    pkg = Package(out / "fp32")
    worst = 0.0
    for image in images[:3]:
        gen = pkg.generate(image, max_new_tokens=max_new_tokens)
        probs, forced = torch_baseline.label_probs(image, gen.token_ids)
        assert forced == gen.label_probs_forced == (max_new_tokens == 2)
        worst = max(worst, max(abs(probs[k] - gen.label_probs[k]) for k in EMOTIONS))
    assert worst < 1e-3, worst


def test_pytorch_greedy_label_is_the_argmax(torch_baseline, images):
    import torch

    m = torch_baseline
    for image in images[:3]:
        inputs = m.processor(images=[[image]], text=[m.prompt], return_tensors="pt")
        with torch.no_grad():
            out = m.model.generate(**inputs, max_new_tokens=12, do_sample=False)
        ids = m.completion_ids(out[0], inputs["input_ids"].shape[1])
        from factory.prompts import parse_answer

        label = parse_answer(m.processor.tokenizer.decode(ids, skip_special_tokens=True)).label
        probs, forced = m.label_probs(image, ids)
        assert label is not None and not forced and max(probs, key=probs.get) == label


@pytest.mark.parametrize("family", list(FAMILIES))
def test_batched_pytorch_scoring_equals_one_label_at_a_time(family, tiny_dirs, synth_root):
    """The 8 right-padded continuations in one forward pass score like 8 unpadded passes (M-RoPE too)."""
    import torch
    from PIL import Image

    from factory.inference import TorchModel, append_tokens
    from svlm_runtime.label_scoring import plan_label_scoring

    m = TorchModel(tiny_dirs(family))
    image = Image.open(next((synth_root / "image").rglob("*.jpg"))).convert("RGB")
    tok = m.processor.tokenizer
    encode, decode = _codec(tok)
    generated = encode("<think>A dark alley")
    probs, forced = m.label_probs(image, generated)
    plan = plan_label_scoring(generated, encode, decode, EMOTIONS, m.style)
    inputs = m.processor(images=[[image]], text=[m.prompt], return_tensors="pt")
    sums = {}
    for label, target in plan.labels.items():
        ids = torch.tensor([[*generated[:plan.kept], *plan.bridge, *target]])
        with torch.no_grad():
            logits = m.model(**append_tokens(inputs, ids, torch.ones_like(ids))).logits
        logp = torch.log_softmax(logits[0, -len(target) - 1:-1].double(), -1)
        sums[label] = float(logp[torch.arange(len(target)), torch.tensor(target)].sum())
    want = label_probabilities(sums)
    assert forced and max(abs(probs[k] - want[k]) for k in EMOTIONS) < 1e-6


# --- SmolVLM (its own byte-level BPE; <answer> is 3 tokens there too) and the demo on every family --------
@pytest.fixture(scope="module")
def smolvlm_package(tiny_dirs, tmp_path_factory):
    """fp32 and int4 packages of the real-tokenizer SmolVLM tiny model (no adapter); returns the fp32 one."""
    from export.build import ExportConfig, export

    out = tmp_path_factory.mktemp("smolvlm") / "export"
    export(ExportConfig(model=str(tiny_dirs("smolvlm")), out=str(out), quant=["fp32", "int4"], validate_images=1,
                        max_new_tokens=4))
    return out / "fp32"


def _script(pkg, ids):
    """Make the package's decoder 'choose' ``ids`` and then its end token (its forward passes still run)."""
    it = iter([*ids, next(iter(pkg.eos_ids))])
    pkg._pick = lambda *args: next(it)


@pytest.mark.parametrize("answer,limit,forced", [
    ("<think>Dark rain.</think><answer>fear</answer>", 99, False),
    ("<think>Dark rain, a cold", 99, True),
    ("<think>Dark rain.</think><answer>fear</answer>", 12, True),  # cut inside the answer
])
def test_smolvlm_onnx_and_pytorch_probabilities_agree(smolvlm_package, tiny_dirs, images, answer, limit, forced):
    """The runtime and the PyTorch path score the same SmolVLM completion alike, answered or forced."""
    from factory.inference import TorchModel
    from svlm_runtime.package import Package

    pkg, m = Package(smolvlm_package), TorchModel(tiny_dirs("smolvlm"))
    ids = m.processor.tokenizer.encode(answer, add_special_tokens=False)
    _script(pkg, ids)
    gen = pkg.generate(images[0], max_new_tokens=limit)
    assert gen.token_ids == ids[:limit] and gen.label_probs_forced is forced
    assert gen.label == (None if forced else "fear")
    probs, torch_forced = m.label_probs(images[0], gen.token_ids)
    assert torch_forced is forced and abs(sum(gen.label_probs.values()) - 1) < 1e-6
    assert max(abs(probs[k] - gen.label_probs[k]) for k in EMOTIONS) < 1e-3


def test_demo_streams_a_smolvlm_package_with_every_label_scored(smolvlm_package, synth_root):
    from demo.app import Models, stream

    model = Models().get(str(smolvlm_package.parent / "int4"))
    assert model.manifest["quantization"]["method"] == "MatMulNBits"
    image = str(next((synth_root / "image").rglob("*.jpg")))
    events = list(stream(model, image, max_new_tokens=6))
    kind, result = events[-1]
    assert kind == "done" and result["tokens"] <= 6
    assert set(result["probs"]) == set(EMOTIONS) and abs(sum(result["probs"].values()) - 1) < 1e-6
    assert result["forced"] == (result["label"] is None)


@pytest.mark.parametrize("family", ["smolvlm", "qwen2vl"])  # InternVL: test_demo.py, on the trained baseline
def test_demo_pytorch_path_streams_and_scores_every_label(family, tiny_dirs, synth_root):
    """The demo's PyTorch variant on a plain real-tokenizer checkpoint (Qwen2-VL has no ONNX export yet, so
    this is its demo path): streamed text, then every label scored after the reasoning."""
    from demo.app import Models, stream

    model = Models().get(str(tiny_dirs(family)))
    image = str(next((synth_root / "image").rglob("*.jpg")))
    events = list(stream(model, image, max_new_tokens=4))
    kind, result = events[-1]
    assert kind == "done" and result["tokens"] <= 4
    assert set(result["probs"]) == set(EMOTIONS) and abs(sum(result["probs"].values()) - 1) < 1e-6
    assert result["forced"] == (result["label"] is None)
