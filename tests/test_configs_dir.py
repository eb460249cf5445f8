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
