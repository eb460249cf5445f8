"""Every YAML under configs/ validates against its config class."""

from pathlib import Path

from factory import config as config_lib
from factory.pipeline import RunConfig

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_run_default_yaml_is_the_builtin_default():
    from_yaml = config_lib.load(RunConfig, CONFIGS / "run_default.yaml")
    assert from_yaml == RunConfig()


def test_teachers_example_validates():
    from factory.cot.build import CotConfig

    cfg = config_lib.load(CotConfig, CONFIGS / "teachers.example.yaml")
    assert [t.kind for t in cfg.teachers] == ["openai", "openai", "attributes"]


def test_train_default_yaml_is_the_builtin_default():
    from factory.train.runner import TrainConfig

    assert config_lib.load(TrainConfig, CONFIGS / "train_default.yaml") == TrainConfig()


def test_every_stage_yaml_validates_and_equals_the_stage_table():
    from factory.train.stages import STAGES, StageConfig

    names = sorted(p.stem for p in (CONFIGS / "stages").glob("*.yaml"))
    assert names == sorted(STAGES)
    for name in names:
        assert config_lib.build(StageConfig, config_lib.read_yaml(CONFIGS / "stages" / f"{name}.yaml")) == STAGES[name]


# --- the stage table itself (factory/train/stages.py; mutation-tested with this file) ---------------------


def test_grpo_stage_defaults_and_overrides():
    """The GRPO defaults every RL stage starts from (8 prompts per optimizer step: 16 completions per device
    step / 8 generations × grad_accum 4), built at import into STAGES; overrides win."""
    from factory.train.stages import STAGES, StageConfig, _grpo

    assert _grpo(rewards=["format"]) == StageConfig(
        kind="grpo", data="prompts", learning_rate=2e-5, batch_size=16, grad_accum=4, num_generations=8,
        max_completion_length=512, save_steps=25, logging_steps=1, train_modules_to_save=False, rewards=["format"])
    assert _grpo(parent="1_sft", rewards=["format"], max_steps=50) == STAGES["2_grpo_format"]
    assert _grpo(rewards=["format"], batch_size=4).batch_size == 4


def test_stage_selection_ignores_spaces_and_empty_parts():
    from factory.train.stages import STAGE_ORDER, select_stages

    assert select_stages(" 1 , 3 ") == ["1_sft", "3_grpo_accuracy"]
    assert select_stages("0 - 2") == list(STAGE_ORDER[:3])
    assert select_stages("") == [] and select_stages("1,,4") == ["1_sft", "4_clgrpo"]


def test_stage_selection_ranges_names_and_errors():
    import pytest

    from factory.errors import ConfigError
    from factory.train.stages import select_stages

    assert select_stages("1-3") == ["1_sft", "2_grpo_format", "3_grpo_accuracy"]  # from lo, not from 0
    assert select_stages("2-2") == ["2_grpo_format"]
    assert select_stages("4_clgrpo,0") == ["0_baseline", "4_clgrpo"]  # full names and indices, run order
    listed = "stages are 0_baseline, 1_sft, 2_grpo_format, 3_grpo_accuracy, 4_clgrpo"
    for bad in ("x-3", "1-x", "3-1"):
        with pytest.raises(ConfigError, match=f"bad stage range '{bad}'; {listed}"):
            select_stages(bad)
    with pytest.raises(ConfigError, match=f"unknown stage 'sft'; {listed} \\(or ranges like 1-4\\)"):
        select_stages("sft")


def test_stage_fields_are_the_stage_config_keys():
    from factory import config as config_lib
    from factory.train.stages import STAGES, stage_fields

    assert stage_fields() == list(config_lib.to_dict(STAGES["4_clgrpo"]))
    assert {"epsilon", "epsilon_high", "clip_low", "num_iterations", "rollout"} <= set(stage_fields())


def test_a_clip_that_never_acts_says_why_and_what_to_set():
    import pytest

    from factory.errors import ConfigError
    from factory.train.stages import check_clip

    with pytest.raises(ConfigError) as info:
        check_clip(clip_low=True, epsilon=0.1, epsilon_high=0.2, loss_type="dapo", grad_accum=4,
                   steps_per_generation=2, num_iterations=2)
    assert str(info.value) == (
        "the clip range [1-0.1, 1+0.2] never acts with grad_accum=4, steps_per_generation=2, num_iterations=2: "
        "no optimizer step falls between sampling a batch and scoring it again (trl computes old log-probs only "
        "when grad_accum % (steps_per_generation × num_iterations) != 0), so the importance ratio is exactly 1 "
        "and this stage would silently equal plain GRPO. Set num_iterations: 2 with grad_accum: 1 (or "
        "num_iterations × steps_per_generation not dividing grad_accum)")


def test_stage_refusals_say_what_to_do():
    import pytest

    from factory.errors import ConfigError
    from factory.train.stages import StageConfig, _grpo

    cases = [
        (dict(kind="sft", data="labels", trl={"delta": 2.0}), "trl.delta decides the clip or the batching, which "
         "the stage sets and checks: it is not supported"),
        (dict(kind="sft", data="labels", trl={"generation_batch_size": 8}), "trl.generation_batch_size decides the "
         "clip or the batching, which the stage sets and checks: use the stage key `steps_per_generation` instead"),
        (dict(kind="sft", data="prompts"), "an sft stage trains on data: cot or data: labels, not prompts"),
        (dict(kind="sft", data="cot", prompts="cot"),
         "prompts: cot chooses the images of a grpo stage; an sft stage's are set by data"),
    ]
    for kw, message in cases:
        with pytest.raises(ConfigError) as info:
            StageConfig(**kw)
        assert str(info.value) == message
    more = [
        (dict(kind="sft", data="cot", rewards=["format"]),
         "an sft stage takes no rewards; set kind: grpo for reward training"),
        (dict(kind="sft", data="cot", max_steps=0, epochs=0.0), "set max_steps > 0 or epochs > 0"),
    ]
    for kw, message in more:
        with pytest.raises(ConfigError) as info:
            StageConfig(**kw)
        assert str(info.value) == message
    for kw, message in [
        (dict(num_generations=1), "num_generations must be ≥ 2: GRPO's advantage compares completions of a prompt"),
        (dict(num_generations=3, batch_size=4, grad_accum=1), "batch_size × steps_per_generation = 4 completions per "
         "generation batch is not a multiple of num_generations=3; set batch_size to a multiple of 3 (e.g. 6 for 2 "
         "prompts per step)"),
    ]:
        with pytest.raises(ConfigError) as info:
            _grpo(rewards=["format"], **kw)
        assert str(info.value) == message
    assert _grpo(rewards=["format"], num_generations=2, batch_size=4).num_generations == 2  # 2 is enough


def test_resolve_stage_reads_the_table_or_a_stage_dir_and_names_the_stage_in_errors(tmp_path):
    import pytest
    import yaml

    from factory.errors import ConfigError
    from factory.train.stages import STAGES, resolve_stage

    assert resolve_stage("1_sft") == STAGES["1_sft"]
    data = yaml.safe_load((CONFIGS / "stages" / "1_sft.yaml").read_text())
    (tmp_path / "1_sft.yaml").write_text(yaml.safe_dump({**data, "learning_rate": 3e-4}))
    assert resolve_stage("1_sft", stage_dir=str(tmp_path)).learning_rate == 3e-4
    assert resolve_stage("1_sft", {"grad_accum": 8}, stage_dir=str(tmp_path)).grad_accum == 8
    with pytest.raises(ConfigError, match="^unknown stage '9_x'; stages are 0_baseline, 1_sft, "):
        resolve_stage("9_x")
    with pytest.raises(ConfigError, match="stages.1_sft"):
        resolve_stage("1_sft", {"learning_rate": "fast"})


def test_configs_tasks_spell_out_the_shipped_tasks():
    """configs/tasks holds the shipped task files unchanged (package data is what an installed svlm reads)."""
    from factory.tasks import _SHIPPED

    shipped = sorted(p.name for p in _SHIPPED.glob("*.yaml"))
    assert shipped == ["emoset.yaml", "facial_expression.yaml"]
    for name in shipped:
        assert (CONFIGS / "tasks" / name).read_text() == (_SHIPPED / name).read_text()
