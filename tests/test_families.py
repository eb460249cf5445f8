"""Every registered family builds, saves, reloads through the Auto classes and generates; with the real
tokenizer a tiny model carries the real checkpoint's tokenizer, template, processor settings and ids."""

import pytest
import torch

from factory.families import FAMILIES, TINY_SIZES, family_of, get_family
from factory.prompts import FORMAT_TOKENS, build_messages, format_answer, parse_answer, question
from factory.errors import SVLMError

# The hub checkpoints' facts (their config.json; InternVL3-1B-hf's from factory/assets/hf/PROVENANCE.md).
REAL_IDS = {
    "internvl": {"vocab": 151674, "image_token_id": 151667, "eos": 151645, "pad": 151643},
    "smolvlm": {"vocab": 49280, "image_token_id": 49190, "eos": 49279, "pad": 2},
    "qwen2vl": {"vocab": 151936, "image_token_id": 151655, "eos": 151645, "pad": 151643},
    "qwen2_5_vl": {"vocab": 151936, "image_token_id": 151655, "eos": 151645, "pad": 151643},
}


def _image(size=40, seed=0):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size, size + 8, 3), dtype=np.uint8))


def test_every_family_has_a_tiny_config_for_every_size():
    for fam in FAMILIES.values():
        assert set(fam.tiny_sizes) == set(TINY_SIZES), f"{fam.name} lacks a tiny size"
        assert callable(fam.build_tiny), f"{fam.name} has no tiny builder"


@pytest.mark.parametrize("family", list(FAMILIES))
def test_tiny_model_round_trips_through_auto_classes(family, tiny_dirs):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    path = tiny_dirs(family)
    model = AutoModelForImageTextToText.from_pretrained(path).eval()
    processor = AutoProcessor.from_pretrained(path)
    fam = get_family(family)
    assert type(model).__name__ == fam.model_class
    assert type(processor).__name__ == fam.processor_class
    assert family_of(model.config) is fam
    fam.apply_image_policy(processor)  # as load_model does: the real settings tile / split / allow 12.8 MP

    prompt = processor.apply_chat_template(build_messages(), add_generation_prompt=True)
    inputs = processor(images=[[_image()], [_image(seed=1)]], text=[prompt, prompt], return_tensors="pt",
                       padding=True)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=6, do_sample=False)
    assert out.shape[0] == 2 and out.shape[1] > inputs["input_ids"].shape[1]
    # Different images must reach the model: the logits differ between the two rows.
    with torch.no_grad():
        logits = model(**inputs).logits[:, -1]
    assert not torch.allclose(logits[0], logits[1])


@pytest.mark.parametrize("family", list(FAMILIES))
def test_real_tokenizer_tiny_carries_the_real_checkpoint(family, tiny_dirs):
    """Real vocabulary size, image token and end-of-turn ids, the chat template verbatim, the real image
    processor settings; only the layer sizes (and what the tiny tower needs: image tokens) are small."""
    import json

    from transformers import AutoConfig, AutoProcessor

    from factory import assets

    fam, want = get_family(family), REAL_IDS[family]
    config = AutoConfig.from_pretrained(tiny_dirs(family))
    processor = AutoProcessor.from_pretrained(tiny_dirs(family))
    tok = processor.tokenizer
    assert config.get_text_config().vocab_size == want["vocab"] == fam.real.vocab_size
    assert config.image_token_id == want["image_token_id"] == fam.image_token_id(tok)
    gen = json.loads((tiny_dirs(family) / "generation_config.json").read_text())
    assert want["eos"] in ([gen["eos_token_id"]] if isinstance(gen["eos_token_id"], int) else gen["eos_token_id"])
    assert tok.convert_tokens_to_ids(fam.eos_token) == want["eos"] and gen["pad_token_id"] == want["pad"]
    hub = assets.read_json(fam.real.assets, "config.json")  # where the hub config is among the real files
    if hub:
        assert hub["image_token_id"] == want["image_token_id"] and hub.get("vocab_size", want["vocab"]) == want["vocab"]
    root = assets.folder(fam.real.assets)
    real_template = (root / "chat_template.jinja").read_text() if (root / "chat_template.jinja").is_file() else \
        json.loads((root / "chat_template.json").read_text())["chat_template"]
    assert processor.chat_template == real_template
    real_ip = (assets.read_json(fam.real.assets, "processor_config.json") or {}).get("image_processor") \
        or assets.read_json(fam.real.assets, "preprocessor_config.json")
    ours = json.loads(processor.image_processor.to_json_string())
    for key in ("image_mean", "image_std", "resample", "rescale_factor", "patch_size", "max_image_size",
                "do_image_splitting", "crop_to_patches"):
        if key in real_ip:
            assert ours[key] == real_ip[key], key
    # The tiny tower takes the real input size; the processor's image tokens match it.
    image_tokens = processor(images=[[_image()]], text=[processor.apply_chat_template(
        build_messages(), add_generation_prompt=True)], return_tensors="pt")["input_ids"].eq(config.image_token_id)
    assert image_tokens.sum() > 0
    # Real BPE: the answer tags are several tokens and labels merge with what precedes them.
    assert len(tok("<answer>", add_special_tokens=False).input_ids) > 1


@pytest.mark.parametrize("family", list(FAMILIES))
def test_real_chat_template_renders_the_question_and_answers_parse_back(family, tiny_dirs):
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_dirs(family))
    tok = processor.tokenizer
    answer = format_answer("sadness", "Dark, rainy street.")
    rendered = processor.apply_chat_template(build_messages(answer=answer))
    assert answer in rendered and question("cot") in rendered
    # The tags are plain text, not special tokens: decoding with skip_special_tokens keeps them.
    decoded = tok.decode(tok(rendered, add_special_tokens=False).input_ids, skip_special_tokens=True)
    assert answer in decoded
    parsed = parse_answer(tok.decode(tok(answer, add_special_tokens=False).input_ids, skip_special_tokens=True))
    assert parsed.label == "sadness" and parsed.well_formed


@pytest.mark.parametrize("family", list(FAMILIES))
def test_small_tokenizer_holds_format_tokens_and_template_takes_both_content_kinds(family, tmp_path):
    """svlm run's default: a 1k-token local BPE where the answer tags are single tokens."""
    from transformers import AutoProcessor

    from factory.tiny import save_tiny

    processor = AutoProcessor.from_pretrained(save_tiny(family, "tiny", tmp_path / "m", tokenizer="small"))
    tok = processor.tokenizer
    assert len(tok) < 2000
    for token in FORMAT_TOKENS:
        ids = tok(token, add_special_tokens=False).input_ids
        assert len(ids) == 1, f"{token} is not a single token"
    text = "<think>calm</think><answer>awe</answer>"
    assert tok.decode(tok(text).input_ids, skip_special_tokens=True) == text
    as_list = processor.apply_chat_template(build_messages(answer="hi"))
    as_str = processor.apply_chat_template([{"role": "user", "content": "hello"},
                                            {"role": "assistant", "content": "hi"}])
    # the answer is the assistant turn, right after the generation prompt, in either content form (the
    # question alone holds "hi" too: "which", "this")
    prompt = processor.apply_chat_template(build_messages(), add_generation_prompt=True)
    assert as_list.startswith(prompt) and as_list[len(prompt):].lstrip().startswith("hi")
    user = processor.apply_chat_template([{"role": "user", "content": "hello"}], add_generation_prompt=True)
    assert as_str.startswith(user) and "hello" in user and as_str[len(user):].lstrip().startswith("hi")


def test_unknown_family_and_model_type_are_clear_errors():
    with pytest.raises(SVLMError, match="registered"):
        get_family("llava")

    class FakeConfig:
        model_type = "llama"

    with pytest.raises(SVLMError, match="not a registered family"):
        family_of(FakeConfig())


def _processed(processor, family: str, image):
    """(pixel_values shape, image tokens in the prompt, Qwen2-VL's image grid) for one image."""
    from factory.prompts import render_prompt

    out = processor(images=[[image]], text=[render_prompt(processor)], return_tensors="np")
    tokens = int((out["input_ids"] == get_family(family).image_token_id(processor.tokenizer)).sum())
    return out["pixel_values"].shape, tokens, out.get("image_grid_thw")


def test_load_model_applies_image_policy(tiny_dirs, tmp_path):
    """The README's image policies as load_model applies them to the real processor settings, seen in what
    the processor makes of a large 1100 x 700 image."""
    from transformers import AutoProcessor

    from factory.models import load_model

    big, small_image = _image(size=700, seed=3).resize((1100, 700)), _image()
    loaded = load_model(tiny_dirs("internvl"), dtype="float32", device="cpu")
    assert loaded.processor.image_processor.crop_to_patches is False
    assert loaded.processor.image_processor.max_patches == 1  # the real setting allows 12 tiles
    assert loaded.family.name == "internvl"
    # one 448² tile whatever the size (the real settings: 6 tiles + a thumbnail here)
    (shape, tokens, _), (_, tokens_small, _) = (_processed(loaded.processor, "internvl", im) for im in (big,
                                                                                                    small_image))
    assert shape == (1, 3, 448, 448) and tokens == tokens_small
    assert _processed(AutoProcessor.from_pretrained(tiny_dirs("internvl")), "internvl", big)[0][0] == 7
    loaded = load_model(tiny_dirs("smolvlm"), dtype="float32", device="cpu")
    assert loaded.processor.image_processor.do_image_splitting is False  # the real setting splits
    # one global 512² image (the real settings: 12 crops + the global image)
    shape, tokens, _ = _processed(loaded.processor, "smolvlm", big)
    assert shape == (1, 1, 3, 512, 512) and tokens == _processed(loaded.processor, "smolvlm", small_image)[1]
    assert _processed(AutoProcessor.from_pretrained(tiny_dirs("smolvlm")), "smolvlm", big)[0][1] == 13
    loaded = load_model(tiny_dirs("qwen2vl"), dtype="float32", device="cpu")
    # A cap on the real 12.8 MP: at most 448² pixels.
    assert loaded.processor.image_processor.size.longest_edge == 448 * 448
    # at most 448² pixels = 1024 patches of 14², 256 tokens after the 2 x 2 merge (the real settings: 975)
    _, tokens, grid = _processed(loaded.processor, "qwen2vl", big)
    patch = loaded.processor.image_processor.patch_size
    assert int(grid.prod()) * patch * patch <= 448 * 448 and 200 < tokens <= 256
    assert _processed(AutoProcessor.from_pretrained(tiny_dirs("qwen2vl")), "qwen2vl", big)[1] > 900
    # A cap keeps a smaller value: the small-tokenizer tiny model asks for fewer pixels than the policy allows.
    from factory.tiny import save_tiny

    small = load_model(save_tiny("qwen2vl", "tiny", tmp_path / "q", tokenizer="small"), dtype="float32", device="cpu")
    assert small.processor.image_processor.size.longest_edge == 32 * 32


@pytest.mark.parametrize("family", list(FAMILIES))
def test_load_model_in_4bit_on_cpu_trains_after_generate(family, tiny_dirs):
    """The nf4 path works on CPU, including the bitsandbytes trap of training after a no-grad generate."""
    from operator import attrgetter

    import bitsandbytes as bnb
    from peft import LoraConfig, get_peft_model

    from factory.models import load_model

    loaded = load_model(tiny_dirs(family), load_in_4bit=True, dtype="float32", device="cpu")
    layers = [m for m in loaded.model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert layers and all(not m.support_avx512bf16_for_cpu for m in layers)
    # The vision tower and projector stay full precision; the language model is quantized.
    vision = attrgetter(loaded.family.onnx.vision)(loaded.model)
    assert not any(isinstance(m, bnb.nn.Linear4bit) for m in vision.modules())
    model = get_peft_model(loaded.model, LoraConfig(r=4, target_modules=loaded.family.lora_target_modules))
    processor = loaded.processor
    prompt = processor.apply_chat_template(build_messages(), add_generation_prompt=True)
    inputs = processor(images=[[_image()]], text=[prompt], return_tensors="pt")
    with torch.no_grad():
        model.generate(**inputs, max_new_tokens=3, do_sample=False)
    model.train()
    out = model(**inputs, labels=inputs["input_ids"])
    out.loss.backward()
    grads = [p.grad for n, p in model.named_parameters() if "lora_" in n and p.requires_grad]
    assert grads and any(g is not None and g.abs().sum() > 0 for g in grads)
