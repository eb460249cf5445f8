import pytest

from factory.prompts import EMOTIONS, build_messages, format_answer, parse_answer, question, render_prompt

PARSE_TABLE = [
    # text, label, well_formed
    ("<think>warm colours, a smile</think><answer>amusement</answer>", "amusement", True),
    ("  <think>dark</think>\n<answer> Sadness </answer>\n", "sadness", True),
    ("<think>x</think><answer>FEAR</answer>", "fear", True),
    ("<think>x</think><answer>sad</answer>", None, False),  # not an EmoSet label
    ("<think>x</think><answer>anger.</answer>", None, False),  # strict about the label set
    ("<think></think><answer>awe</answer>", "awe", False),  # empty reasoning
    ("<think>   </think><answer>awe</answer>", "awe", False),
    ("<think>x</think><answer>awe</answer> trailing text", "awe", False),  # nothing after the answer
    ("preamble <think>x</think><answer>awe</answer>", "awe", False),
    ("<answer>disgust</answer>", "disgust", False),  # label without reasoning
    ("<think>x <answer>fear</answer></think><answer>awe</answer>", "awe", False),  # nested tags
    ("<think>x</think><answer>awe</answer><answer>fear</answer>", "fear", False),  # last answer counts
    ("it is probably awe", None, False),
    ("", None, False),
    ("<think>x</think><answer></answer>", None, False),
]


@pytest.mark.parametrize("text,label,well_formed", PARSE_TABLE)
def test_parse_answer_table(text, label, well_formed):
    parsed = parse_answer(text)
    assert parsed.label == label
    assert parsed.well_formed is well_formed


@pytest.mark.parametrize("text,label", [("contentment", "contentment"), (" Awe\n", "awe"), ("joy", None),
                                        ("awe and fear", None)])
def test_bare_label_only_when_allowed(text, label):
    assert parse_answer(text, allow_bare_label=True).label == label
    assert parse_answer(text).label is None


def test_emotions_follow_official_index_order():
    assert EMOTIONS == ("amusement", "awe", "contentment", "excitement", "anger", "disgust", "fear", "sadness")


@pytest.mark.parametrize("label", EMOTIONS)
def test_format_then_parse_round_trips(label):
    text = format_answer(label, "some evidence")
    parsed = parse_answer(text)
    assert parsed.label == label and parsed.well_formed
    assert parse_answer(format_answer(label)).label == label


def test_format_rejects_unknown_label():
    with pytest.raises(ValueError, match="unknown label"):
        format_answer("joy", "x")


def test_questions_name_every_emotion_and_messages_hold_an_image():
    for style in ("cot", "label"):
        assert all(e in question(style) for e in EMOTIONS)
    msgs = build_messages("label", answer="<answer>awe</answer>")
    assert [m["role"] for m in msgs] == ["user", "assistant"]
    assert msgs[0]["content"][0] == {"type": "image"}
    with pytest.raises(ValueError, match="unknown prompt style 'nope'; valid: \\['cot', 'label'\\]"):
        question("nope")


def test_render_prompt_asks_the_chat_template_for_the_generation_prompt():
    calls = []

    class Processor:
        def apply_chat_template(self, messages, **kwargs):
            calls.append((messages, kwargs))
            return f"PROMPT{len(calls)}"

    assert render_prompt(Processor()) == "PROMPT1" and render_prompt(Processor(), "label") == "PROMPT2"
    assert calls == [(build_messages("cot"), {"add_generation_prompt": True}),
                     (build_messages("label"), {"add_generation_prompt": True})]


def test_the_questions_and_messages_exactly():
    assert question() == question("cot")
    assert "<think></think>" in question("cot") and question("cot").endswith("inside <answer></answer>.")
    assert "<think>" not in question("label") and question("label").endswith(
        "Answer with the emotion only, inside <answer></answer>.")
    assert build_messages() == [{"role": "user", "content": [{"type": "image"},
                                                             {"type": "text", "text": question("cot")}]}]
    assert build_messages("label", "A")[1] == {"role": "assistant", "content": [{"type": "text", "text": "A"}]}
    assert len(build_messages("label")) == 1


def test_format_answer_strips_the_reasoning():
    assert format_answer("awe", "  vast sky \n") == "<think>vast sky</think><answer>awe</answer>"
    assert format_answer("fear") == "<answer>fear</answer>"


def test_shipped_tasks_use_the_official_label_files_order():
    """The task files spell out their labels; they must be EmoSet's info.json vocabularies, in index order."""
    import json
    from importlib import resources

    from factory.tasks import load_task

    info = json.loads(resources.files("factory.data").joinpath("info.json").read_text())
    for task, field in (("emoset", "emotion"), ("facial_expression", "facial_expression")):
        idx2label = info[field]["idx2label"]
        assert load_task(task).labels == [idx2label[str(i)] for i in range(len(idx2label))]
    assert EMOTIONS == tuple(load_task("emoset").labels)


def test_parse_answer_returns_the_reasoning_and_a_bare_label_is_never_well_formed():
    assert parse_answer("<think> dark, rain </think><answer>sadness</answer>").think == "dark, rain"
    assert parse_answer("<answer>awe</answer>").think is None
    bare = parse_answer("awe", allow_bare_label=True)
    assert bare.label == "awe" and bare.well_formed is False


def test_training_and_packages_share_one_answer_format():
    """The parser training uses is the runtime's, with EmoSet's labels; what the export writes into a manifest
    reads back as the same format, so a package judges answers as training did."""
    from factory.prompts import ANSWER_FORMAT
    from svlm_runtime.answer_format import AnswerFormat

    assert ANSWER_FORMAT.labels == EMOTIONS
    manifest = {"labels": list(EMOTIONS), "answer": ANSWER_FORMAT.to_manifest()}
    assert AnswerFormat.from_manifest(manifest) == ANSWER_FORMAT
    assert AnswerFormat.from_manifest({"labels": list(EMOTIONS)}) == ANSWER_FORMAT  # older packages
    text = "<think>x</think><answer> Awe</answer>"
    assert AnswerFormat.from_manifest(manifest).parse(text) == parse_answer(text)


def test_other_tags_parse_by_the_same_rule():
    from svlm_runtime.answer_format import AnswerFormat

    fmt = AnswerFormat(labels=("awe", "fear"), think=("[r]", "[/r]"), answer=("[a]", "[/a]"))
    assert fmt.parse("[r]vast[/r][a]AWE[/a]") == parse_answer("<think>vast</think><answer>awe</answer>")
    assert fmt.parse("[r]vast [a]x[/a][/r][a]fear[/a]").well_formed is False  # a tag inside the reasoning
    assert fmt.parse("[r]vast[/r][a][b]fear[/a]").label is None  # the answer holds a tag character
    assert fmt.parse("<think>vast</think><answer>awe</answer>").label is None
    assert fmt.render("fear", "dark") == "[r]dark[/r][a]fear[/a]"


def test_the_last_answer_is_found_like_the_regex_did_in_linear_time():
    """Same answer as the last of re.findall("<answer>(.*?)</answer>") on random tag soup; and a hostile 2 MB
    reply of unclosed tags parses at once (the regex rescanned the rest of the text from each tag: minutes)."""
    import random
    import re
    import time

    from factory.prompts import ANSWER_FORMAT

    regex = re.compile(r"<answer>(.*?)</answer>", re.S)
    pieces = ["<answer>", "</answer>", "awe", "Fear", " ", "<think>", "</think>", "x", "<", ">", "\n"]
    rng = random.Random(0)
    for _ in range(5000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 12)))
        found = regex.findall(text)
        assert parse_answer(text).label == (ANSWER_FORMAT.normalize_label(found[-1]) if found else None), text
    t0 = time.perf_counter()
    assert parse_answer("<answer>" * 250_000).label is None
    assert parse_answer("<think>a</think>" + "<answer>" * 250_000 + "awe</answer>").label is None  # "<answer>" inside
    assert time.perf_counter() - t0 < 2  # linear: milliseconds; the quadratic regex needed minutes
