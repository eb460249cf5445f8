"""The fused decoder generates what ``generate`` does: token for token when greedy (left padding, each family's
positions, end of sequence, min_new_tokens, suppressed tokens), from the same processed distribution when
sampling, and as one graph that ``torch.compile`` can capture whole (a graph break would cost the CUDA graph)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import GenerationConfig

from factory.train.decode import FusedDecoder, UnsupportedGeneration, choose, compile_options

FAMILIES = ["internvl", "qwen2vl", "qwen2_5_vl", "smolvlm"]


@pytest.fixture(scope="module")
def models(tiny_dirs):
    from factory.models import load_model

    cache = {}

    def get(family):
        if family not in cache:
            loaded = load_model(tiny_dirs(family), dtype="float32", device="cpu")
            cache[family] = (loaded.model.eval(), loaded.processor)
        return cache[family]

    return get


def _inputs(processor, words=(1, 5, 9)):
    """One image per row and prompts of different lengths: left padding, as trl batches them."""
    from PIL import Image

    rng = np.random.default_rng(0)
    images = [[Image.fromarray(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8))] for _ in words]
    texts = [processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "look " * k}]}],
        add_generation_prompt=True) for k in words]
    processor.tokenizer.padding_side = "left"
    return processor(images=images, text=texts, return_tensors="pt", padding=True)


def _config(model, processor, **options):
    base = {"max_new_tokens": 10, "do_sample": False, "pad_token_id": processor.tokenizer.pad_token_id,
            "eos_token_id": model.generation_config.eos_token_id, "cache_implementation": "static"}
    return GenerationConfig(**{**base, **options})


@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_tokens_equal_generate(models, family):
    model, processor = models(family)
    inputs = _inputs(processor)
    assert len(set(inputs["attention_mask"].sum(1).tolist())) == 3  # three padded lengths
    config = _config(model, processor)
    reference = model.generate(**inputs, generation_config=config)
    assert torch.equal(FusedDecoder(model).generate(generation_config=config, **inputs), reference)


@pytest.mark.parametrize("family", ["internvl", "qwen2vl"])
def test_end_of_sequence_min_new_tokens_and_suppression_equal_generate(models, family):
    """Rows that end early are padded and the batch stops when all have ended, with generate's width; EOS is
    barred before min_new_tokens; suppressed tokens are never chosen."""
    model, processor = models(family)
    inputs = _inputs(processor)
    prompt = inputs["input_ids"].shape[1]
    free = model.generate(**inputs, generation_config=_config(model, processor))[:, prompt:]
    late = int(free[0, 3])  # row 0 says this 4th: as EOS, row 0 ends there
    # min_new_tokens at its boundary: EOS is barred up to token 5, row 0 would choose an EOS at token 5 if it
    # were allowed, and does choose one at token 6
    def row0(eos, at):
        barred = _config(model, processor, eos_token_id=eos, min_new_tokens=6)
        return int(model.generate(**inputs, generation_config=barred)[0, prompt + at])

    boundary = [int(free[0, 1])]
    boundary.append(row0(boundary, 5))
    boundary.append(row0(boundary, 6))
    cases = [{"eos_token_id": late},
             {"eos_token_id": [late, int(free[1, 2])]},  # two ends, rows end at different steps
             {"eos_token_id": torch.tensor([late, int(free[1, 2])])},  # as a tensor
             {"eos_token_id": boundary, "min_new_tokens": 6},
             {"suppress_tokens": [int(free[1, 2]), int(free[0, 4])]},
             {"eos_token_id": [int(t) for t in free[:, 0]]}]  # every row ends at the first token
    for options in cases:
        config = _config(model, processor, **options)
        reference = model.generate(**inputs, generation_config=config)
        for every in (1, 16):  # the host checks for the end each token, or every 16 (the batch ends between)
            fused = FusedDecoder(model, check_every=every).generate(generation_config=config, **inputs)
            assert torch.equal(fused, reference), (options, every)
    # the cases did what they are for: a row ended early and the rest went on; an EOS came right at the boundary
    ended = FusedDecoder(model).generate(generation_config=_config(model, processor, eos_token_id=late), **inputs)
    assert ended.shape[1] > prompt + 4 and int(ended[0, prompt + 4]) == processor.tokenizer.pad_token_id
    at_boundary = model.generate(**inputs, generation_config=_config(model, processor, eos_token_id=boundary,
                                                                     min_new_tokens=6))
    assert int(at_boundary[0, prompt + 5]) not in boundary and int(at_boundary[0, prompt + 6]) in boundary


def test_processors_are_the_ones_generate_applies():
    """For each supported option, the step's processor chain scores as generate's own chain, built from the
    config generate resolves (the call's values, then the model's generation config, then the library's
    defaults: top_k 50 when neither sets it). Read here from transformers' private builder: the reference."""
    from transformers import AutoModelForCausalLM, Qwen2Config

    from factory.train.decode import _resolved_config, _warpers

    model = AutoModelForCausalLM.from_config(Qwen2Config(vocab_size=300, hidden_size=16, intermediate_size=32,
                                                         num_hidden_layers=1, num_attention_heads=2,
                                                         num_key_value_heads=1))
    torch.manual_seed(0)
    logits = torch.randn(4, 300) * 3
    kept = {}
    for model_top_k in (None, 5):  # a checkpoint's generation_config.json may set its own (Qwen2-VL's: top_k 1)
        model.generation_config.top_k = model_top_k
        for options in [{"do_sample": True, "temperature": 0.7}, {"do_sample": True, "top_k": 20},
                        {"do_sample": True, "top_p": 0.8, "temperature": 1.3, "top_k": 0},
                        {"do_sample": True, "min_p": 0.05},
                        {"do_sample": True, "temperature": 0.9, "top_k": 50, "top_p": 0.9, "suppress_tokens": [3, 7]},
                        {"do_sample": False, "suppress_tokens": [5]}]:
            config = GenerationConfig(max_new_tokens=4, eos_token_id=1, pad_token_id=0, **options)
            ours = logits
            for warper in _warpers(_resolved_config(model, config)[0], 300, "cpu"):
                ours = warper(None, ours)
            resolved, _ = model._prepare_generation_config(config)
            theirs = model._get_logits_processor(generation_config=resolved, input_ids_seq_length=1, device="cpu")(
                torch.zeros(4, 1, dtype=torch.long), logits.clone())
            assert torch.equal(torch.isinf(ours), torch.isinf(theirs)), options
            assert torch.allclose(ours[~torch.isinf(ours)], theirs[~torch.isinf(theirs)]), options
            kept[model_top_k, str(options)] = int((~torch.isinf(ours[0])).sum())
    first = str({"do_sample": True, "temperature": 0.7})
    assert kept[None, first] == 50 and kept[5, first] == 5  # the defaults and the model's own value reach the step


def test_the_exponential_race_draws_from_the_softmax():
    """Token frequencies over many draws fit softmax(scores) (chi-square), including -inf (never drawn)."""
    from scipy.stats import chisquare

    scores = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0, float("-inf")])
    probs = torch.softmax(scores.double(), -1).numpy()[:5]
    torch.manual_seed(0)
    draws = choose(scores.expand(40_000, -1).contiguous(), sample=True)
    counts = torch.bincount(draws, minlength=6)
    assert counts[5] == 0
    assert chisquare(counts[:5].numpy(), probs / probs.sum() * 40_000).pvalue > 1e-3
    # and the test can fail: draws from the temperature-2 distribution do not fit
    hot = torch.bincount(choose((scores / 2).expand(40_000, -1).contiguous(), sample=True), minlength=6)
    assert chisquare(hot[:5].numpy(), probs / probs.sum() * 40_000).pvalue < 1e-6


@pytest.mark.parametrize("family", ["internvl", "qwen2vl"])
def test_sampled_tokens_stay_inside_the_processed_distribution(models, family):
    """With top_k: every token the fused loop samples is among the k best of the model's own logits for its
    context (scored again in one forward over the whole sequence), and sampling is seeded by torch's RNG."""
    model, processor = models(family)
    inputs = _inputs(processor, words=(4, 4, 4, 4))  # no padding: the teacher-forced pass sees the same positions
    config = _config(model, processor, do_sample=True, top_k=3, temperature=1.5, max_new_tokens=12)
    decoder = FusedDecoder(model)
    torch.manual_seed(7)
    sequences = decoder.generate(generation_config=config, **inputs)
    torch.manual_seed(7)
    assert torch.equal(decoder.generate(generation_config=config, **inputs), sequences)
    prompt = inputs["input_ids"].shape[1]
    with torch.no_grad():
        full = {**inputs, "input_ids": sequences, "attention_mask": torch.ones_like(sequences)}
        if "mm_token_type_ids" in inputs:  # Qwen2-VL: generated tokens are text
            full["mm_token_type_ids"] = torch.nn.functional.pad(inputs["mm_token_type_ids"],
                                                                (0, sequences.shape[1] - prompt))
        logits = model(**full).logits[:, prompt - 1:-1]
    top = logits.topk(3, dim=-1).indices
    chosen = sequences[:, prompt:]
    assert (top == chosen[..., None]).any(-1).all()
    assert len({tuple(r) for r in chosen[:, 1:].tolist()}) > 1  # the rows were sampled, not all greedy


@pytest.mark.parametrize("family", ["internvl", "qwen2vl"])
def test_the_step_compiles_as_one_graph(models, family):
    """``fullgraph=True`` fails on any graph break: the whole step (forward, processors, sampler, bookkeeping)
    is one graph, as a CUDA-graph replay needs. The eager backend keeps the test fast; with the same seed it
    samples the same tokens as the uncompiled step."""
    torch._dynamo.reset()
    model, processor = models(family)
    inputs = _inputs(processor)
    config = _config(model, processor, do_sample=True, top_k=40, top_p=0.9, temperature=0.8, min_new_tokens=4,
                     suppress_tokens=[5], max_new_tokens=8)
    torch.manual_seed(3)
    eager = FusedDecoder(model).generate(generation_config=config, **inputs)
    torch.manual_seed(3)
    compiled = FusedDecoder(model, compile={"backend": "eager", "fullgraph": True}).generate(
        generation_config=config, **inputs)
    assert torch.equal(compiled, eager)


@pytest.mark.slow
def test_the_step_compiles_with_inductor(models):
    """The real compiler (inductor, C++ on a CPU) lowers the step, random draws included; greedy output is
    unchanged."""
    torch._dynamo.reset()
    model, processor = models("qwen2vl")
    inputs = _inputs(processor)
    config = _config(model, processor)
    reference = model.generate(**inputs, generation_config=config)
    # the CUDA options less the CUDA graphs
    options = compile_options("cuda")
    options["options"] = {k: v for k, v in options["options"].items() if k != "triton.cudagraphs"}
    decoder = FusedDecoder(model, compile=options)
    assert torch.equal(decoder.generate(generation_config=config, **inputs), reference)
    sampled = decoder.generate(generation_config=_config(model, processor, do_sample=True, top_k=5), **inputs)
    assert sampled.shape == reference.shape and not torch.equal(sampled, reference)
    # compiled, the race's noise keeps float64 resolution (inductor's own rand would draw on a float32 grid)
    from factory.train.decode import exponential_noise

    noise = torch.compile(exponential_noise, **options)(torch.zeros(100_000))
    uniform = torch.exp(-noise)  # the uniform behind each draw: on a float32 grid, it would round-trip float32
    on_grid = ((uniform - uniform.float().double()).abs() / uniform < 1e-12).float().mean()
    assert noise.dtype == torch.float64 and on_grid < 0.01


@pytest.mark.parametrize("options", [{"repetition_penalty": 1.2}, {"num_beams": 2}, {"no_repeat_ngram_size": 3},
                                     {"max_new_tokens": None, "max_length": 40}, {"return_dict_in_generate": True}])
def test_options_it_cannot_reproduce_are_refused(models, options):
    model, processor = models("internvl")
    config = _config(model, processor, **options)
    with pytest.raises(UnsupportedGeneration):
        FusedDecoder(model).generate(generation_config=config, **_inputs(processor))


@pytest.mark.parametrize("family", ["internvl", "qwen2vl"])
def test_one_compiled_step_serves_every_prompt_length(models, family):
    """trl pads each batch to its longest prompt, so lengths vary from rollout to rollout: the cache length is
    rounded up, the step's shapes stay, and one graph serves ten lengths (``fullgraph`` would fail past
    torch's recompile limit of 8 otherwise)."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    model, processor = models(family)
    decoder = FusedDecoder(model, compile={"backend": "eager", "fullgraph": True, "dynamic": False})
    config = _config(model, processor, max_new_tokens=4)
    lengths = set()
    for n in range(1, 11):
        inputs = _inputs(processor, words=(n, n + 1))
        lengths.add(inputs["input_ids"].shape[1])
        assert torch.equal(decoder.generate(generation_config=config, **inputs),
                           model.generate(**inputs, generation_config=config))
    assert len(lengths) == 10 and counters["stats"]["unique_graphs"] == 1


def test_the_recompile_limit_falls_back_to_the_eager_step(models, monkeypatch):
    model, processor = models("internvl")
    inputs = _inputs(processor)
    config = _config(model, processor, max_new_tokens=5)
    decoder = FusedDecoder(model)

    def limit(state, fixed):
        raise torch._dynamo.exc.FailOnRecompileLimitHit("recompile_limit reached with fullgraph=True")

    decoder._step = limit
    with pytest.warns(RuntimeWarning, match="recompile limit"):
        out = decoder.generate(generation_config=config, **inputs)
    assert torch.equal(out, model.generate(**inputs, generation_config=config))


def test_options_and_inputs_as_keywords_are_generate_s(models):
    """Options given as keywords (as to ``generate``) reach the step too, not only the prefill; a prompt batch
    without an attention mask decodes as generate's when unpadded, and is refused when padded (generate would
    guess the mask from pad tokens)."""
    model, processor = models("qwen2vl")
    inputs = _inputs(processor)
    base = _config(model, processor, max_new_tokens=9)
    free = model.generate(**inputs, generation_config=base)[:, inputs["input_ids"].shape[1]:]
    options = {"max_new_tokens": 5, "suppress_tokens": [int(free[0, 2]), int(free[2, 3])]}
    reference = model.generate(**inputs, generation_config=base, **options)
    assert reference.shape[1] == inputs["input_ids"].shape[1] + 5
    assert torch.equal(FusedDecoder(model).generate(generation_config=base, **inputs, **options), reference)
    with pytest.raises(UnsupportedGeneration, match="attention_mask"):
        FusedDecoder(model).generate(generation_config=base, **{k: v for k, v in inputs.items() if k != "attention_mask"})
    same = _inputs(processor, words=(3, 3))
    unmasked = {k: v for k, v in same.items() if k != "attention_mask"}
    assert torch.equal(FusedDecoder(model).generate(generation_config=base, **unmasked),
                       model.generate(**unmasked, generation_config=base))


@pytest.mark.slow
def test_the_race_draws_tokens_rarer_than_float32_resolution():
    """A 200k vocabulary whose tail tokens each have p = 3e-8, under the 6e-8 that -log(float32 uniform) can
    resolve near 0: the tail is drawn at its true rate (Poisson: 60 expected; float32 uniforms give ~16)."""
    vocab, tail_p, draws = 200_000, 3e-8, 10_000
    logits = torch.full((vocab,), float(np.log(tail_p)), dtype=torch.float32)
    logits[0] = float(np.log(1 - (vocab - 1) * tail_p))
    torch.manual_seed(0)
    hits = sum(int((choose(logits.expand(500, -1).contiguous(), sample=True) != 0).sum()) for _ in range(draws // 500))
    expected = draws * (vocab - 1) * tail_p  # 60
    assert expected * 0.6 < hits < expected * 1.5, hits


def test_a_rollout_copy_s_static_cache_setting_is_not_a_conflict(models):
    """A rollout copy asks for the static cache in its own generation config; the decoder passes its own cache
    object, which generate would refuse beside that option: it is set aside during the prefill, then restored."""
    model, processor = models("internvl")
    inputs = _inputs(processor)
    config = _config(model, processor, cache_implementation=None)
    reference = model.generate(**inputs, generation_config=config)
    model.generation_config.cache_implementation = "static"
    try:
        assert torch.equal(FusedDecoder(model).generate(generation_config=config, **inputs), reference)
        assert model.generation_config.cache_implementation == "static"
    finally:
        model.generation_config.cache_implementation = None


def test_the_cache_is_reused_and_never_shrinks(models):
    """Prompt + completion lengths on both sides of a 256 boundary: the longer cache is kept for the shorter
    prompt (one cache, one graph shape), and tokens stay generate's."""
    from factory.train.decode import CACHE_STEP

    model, processor = models("internvl")
    short, long = _inputs(processor, words=(1, 1)), _inputs(processor, words=(6, 6))
    new = CACHE_STEP - short["input_ids"].shape[1] - 1
    assert long["input_ids"].shape[1] + new > CACHE_STEP
    config = _config(model, processor, max_new_tokens=new, min_new_tokens=new)
    decoder = FusedDecoder(model)
    caches = []
    for inputs in (short, long, short):
        assert torch.equal(decoder.generate(generation_config=config, **inputs),
                           model.generate(**inputs, generation_config=config))
        caches.append(decoder._kv[2][1])
    assert caches[0] is not caches[1] and caches[2] is caches[1] and decoder._kv[2][0] == 2 * CACHE_STEP
    # another row count gets its own cache, and the first is still there for the next full chunk
    decoder.generate(generation_config=config, **_inputs(processor, words=(1, 1, 1)))
    assert set(decoder._kv) == {2, 3} and decoder._kv[2][1] is caches[1]


def test_a_single_token_comes_from_generate_alone(models):
    model, processor = models("internvl")
    inputs = _inputs(processor)
    config = _config(model, processor, max_new_tokens=1)
    assert torch.equal(FusedDecoder(model).generate(generation_config=config, **inputs),
                       model.generate(**inputs, generation_config=config))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("family", ["internvl", "qwen2vl"])
def test_cuda_graph_step_generates_what_the_eager_step_does(tiny_dirs, family):
    """On CUDA with the rollout's options (reduce-overhead: one CUDA-graph replay per token): greedy tokens as
    the eager step's over three prompt lengths with one compiled graph, and sampled calls that differ (the
    random draws advance from replay to replay)."""
    from torch._dynamo.utils import counters

    from factory.models import load_model

    torch._dynamo.reset()
    counters.clear()
    loaded = load_model(tiny_dirs(family), dtype="float32", device="cuda")
    model, processor = loaded.model.eval(), loaded.processor
    config = _config(model, processor, max_new_tokens=24)
    eager = FusedDecoder(model)
    graphed = FusedDecoder(model, compile=compile_options("cuda"))
    for words in [(1, 5, 9), (2, 2, 12), (1, 5, 9)]:
        inputs = _inputs(processor, words).to("cuda")
        want, got = eager.generate(generation_config=config, **inputs), graphed.generate(generation_config=config, **inputs)
        assert got.shape == want.shape and (got == want).float().mean() > 0.95  # fp32 kernels may round a near-tie
    assert counters["stats"]["unique_graphs"] == 1
    sampled = _config(model, processor, max_new_tokens=24, do_sample=True)
    first, second = (graphed.generate(generation_config=sampled, **inputs) for _ in range(2))
    assert not torch.equal(first, second)
