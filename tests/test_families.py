"""Every registered family builds, saves, reloads through the Auto classes and generates."""

import pytest
import torch

from factory.families import FAMILIES, TINY_SIZES, family_of, get_family
from factory.prompts import FORMAT_TOKENS, build_messages
from factory.errors import SVLMError


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
def test_tokenizer_holds_format_tokens_and_template_takes_both_content_kinds(family, tiny_dirs):
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_dirs(family))
    tok = processor.tokenizer
    for token in FORMAT_TOKENS:
        ids = tok(token, add_special_tokens=False).input_ids
        assert len(ids) == 1, f"{token} is not a single token"
    text = "<think>calm</think><answer>awe</answer>"
    assert tok.decode(tok(text).input_ids, skip_special_tokens=True) == text
    as_list = processor.apply_chat_template(build_messages(answer="hi"))
    as_str = processor.apply_chat_template([{"role": "user", "content": "hello"},
                                            {"role": "assistant", "content": "hi"}])
    assert "hello" in as_str and "hi" in as_str
    assert as_list.count("hi") >= 1


def test_unknown_family_and_model_type_are_clear_errors():
    with pytest.raises(SVLMError, match="registered"):
        get_family("llava")

    class FakeConfig:
        model_type = "llama"

    with pytest.raises(SVLMError, match="not a registered family"):
        family_of(FakeConfig())


def test_load_model_applies_image_policy(tiny_dirs):
    from factory.models import load_model

    loaded = load_model(tiny_dirs("internvl"), dtype="float32", device="cpu")
    assert loaded.processor.image_processor.crop_to_patches is False
    assert loaded.family.name == "internvl"
    loaded = load_model(tiny_dirs("qwen2vl"), dtype="float32", device="cpu")
    # A cap: the tiny model already asks for fewer pixels than the policy allows, so it keeps its value.
    assert loaded.processor.image_processor.size.longest_edge == 32 * 32


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
