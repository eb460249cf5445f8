"""Reward tables: each row is a completion, the ground truth and the expected rewards."""

import pytest

from factory.errors import ConfigError
from factory.rewards import ACCURACY_BY_CLASS, REWARDS, accuracy_reward, format_reward, get_rewards

ROWS = [
    # completion, truth, format, accuracy
    ("<think>a dark alley at night</think><answer>fear</answer>", "fear", 1.0, 1.0),
    ("<think>a dark alley at night</think><answer>fear</answer>", "sadness", 1.0, 0.0),
    ("  <think>x</think>\n<answer> Fear </answer>\n", "fear", 1.0, 1.0),  # whitespace and case tolerated
    ("<think>x</think><answer>fear</answer> because it is dark", "fear", 0.0, 1.0),  # text after the answer
    ("<think>x</think><answer>fear</answer><answer>awe</answer>", "awe", 0.0, 1.0),  # last answer counts
    ("<answer>fear</answer>", "fear", 0.0, 1.0),  # no reasoning
    ("<think></think><answer>fear</answer>", "fear", 0.0, 1.0),  # empty reasoning
    ("<think>x<answer>awe</answer></think><answer>fear</answer>", "fear", 0.0, 1.0),  # nested tags
    ("<think>x</think><answer>scared</answer>", "fear", 0.0, 0.0),  # not one of the 8 labels
    ("<think>x</think>fear", "fear", 0.0, 0.0),  # no answer block
    ("fear", "fear", 0.0, 0.0),
    ("", "fear", 0.0, 0.0),
    ("<think>x</think><answer>fear", "fear", 0.0, 0.0),  # truncated
]


@pytest.mark.parametrize("text,truth,fmt,acc", ROWS)
def test_reward_table(text, truth, fmt, acc):
    conversational = [[{"role": "assistant", "content": text}]]
    for completions in ([text], conversational):
        assert format_reward(completions=completions, label=[truth]) == [fmt]
        assert accuracy_reward(completions=completions, label=[truth]) == [acc]


def test_rewards_take_trl_keyword_arguments():
    texts = [r[0] for r in ROWS]
    kwargs = {"prompts": [None] * len(ROWS), "completion_ids": [[1]] * len(ROWS), "image": [None] * len(ROWS),
              "trainer_state": None}
    assert format_reward(completions=texts, **kwargs) == [r[2] for r in ROWS]
    assert accuracy_reward(completions=texts, label=[r[1] for r in ROWS], **kwargs) == [r[3] for r in ROWS]


def test_every_reward_name_resolves_and_unknown_names_are_listed():
    assert [f.__name__ for f in get_rewards(list(REWARDS))] == [f.__name__ for f in REWARDS.values()]
    with pytest.raises(ConfigError, match="give a built-in one \\(accuracy, format\\) or module:function"):
        get_rewards(["format", "fromat"])


def test_accuracy_reward_logs_each_class_through_trls_callback():
    logged = []
    texts = ["<answer>fear</answer>", "<answer>awe</answer>", "<answer>fear</answer>", "no answer"]
    truth = ["fear", "fear", "awe", "awe"]
    rewards = accuracy_reward(completions=texts, label=truth, log_metric=lambda name, v: logged.append((name, v)))
    assert rewards == [1.0, 0.0, 0.0, 0.0]
    assert logged == [(f"{ACCURACY_BY_CLASS}/fear", 1.0), (f"{ACCURACY_BY_CLASS}/fear", 0.0),
                      (f"{ACCURACY_BY_CLASS}/awe", 0.0), (f"{ACCURACY_BY_CLASS}/awe", 0.0)]


def test_accuracy_reward_refuses_completions_and_labels_of_different_lengths():
    """A batch whose labels are misaligned with its completions must not be scored against the wrong image."""
    with pytest.raises(ValueError):
        accuracy_reward(completions=["<answer>awe</answer>", "<answer>fear</answer>"], label=["awe"])
    with pytest.raises(ValueError):
        accuracy_reward(completions=["<answer>awe</answer>"], label=["awe", "fear"])


@pytest.mark.parametrize("completion,text", [
    ("plain", "plain"),
    ([{"role": "assistant", "content": "<answer>awe</answer>"}], "<answer>awe</answer>"),
    ([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "a"),  # the last turn
    ([{"role": "assistant", "content": [{"type": "text", "text": "<think>x</think>"}, {"type": "image"},
                                        {"type": "text", "text": "<answer>awe</answer>"}]}],
     "<think>x</think><answer>awe</answer>"),  # content parts: the text parts, joined
    ([{"role": "assistant", "content": [{"type": "text"}, {"type": "image", "text": "not text"}]}], ""),
    ([], ""),
    ([{"role": "assistant", "content": None}], ""),
    ([{"role": "assistant", "content": ""}], ""),
])
def test_completion_text_of_every_shape_trl_passes(completion, text):
    from factory.rewards import completion_text

    assert completion_text(completion) == text
