from dataclasses import dataclass, field

import pytest
import yaml

from factory import config as config_lib
from factory.errors import ConfigError
from factory.pipeline import RunConfig


@dataclass
class Inner:
    lr: float = 1e-4
    steps: int = 10
    tags: list[str] = field(default_factory=list)


@dataclass
class Outer:
    name: str = "x"
    flag: bool = False
    path: str | None = None
    inner: Inner = field(default_factory=Inner)


def test_yaml_then_overrides_then_types(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: from_yaml\ninner:\n  steps: 5\n  lr: 2e-5\n")
    cfg = config_lib.load(Outer, path, ["inner.steps=7", "flag=true", "inner.tags=[a, b]"])
    assert cfg.name == "from_yaml"
    assert cfg.inner.steps == 7  # override beats YAML
    assert cfg.inner.lr == pytest.approx(2e-5)  # YAML's "2e-5" string becomes a float
    assert cfg.flag is True and cfg.inner.tags == ["a", "b"]


@pytest.mark.parametrize("override,message", [
    ("nmae=y", "did you mean 'name'"),
    ("inner.step=3", "unknown config key 'inner.step'"),
    ("inner.steps=three", "expected an integer"),
    ("flag=maybe", "expected true/false"),
    ("inner=3", "expected a mapping"),
    ("novalue", "key=value"),
])
def test_bad_overrides_are_errors(override, message):
    with pytest.raises(ConfigError, match=message):
        config_lib.load(Outer, None, [override])


def test_unknown_key_lists_valid_keys(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("inner:\n  lrr: 1\n")
    with pytest.raises(ConfigError) as info:
        config_lib.load(Outer, path)
    assert "valid keys here: lr, steps, tags" in str(info.value)


def test_bad_yaml_file_is_an_error(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        config_lib.load(Outer, path)
    with pytest.raises(ConfigError, match="not found"):
        config_lib.load(Outer, tmp_path / "missing.yaml")


def test_saved_config_round_trips(tmp_path):
    cfg = config_lib.load(RunConfig, None, ["model.size=tiny", "data.synth.n=64", "eval.limit=4"])
    path = config_lib.save(cfg, tmp_path)
    again = config_lib.build(RunConfig, yaml.safe_load(path.read_text()))
    assert again == cfg


def test_run_config_validates_sections():
    with pytest.raises(ConfigError, match="not registered"):
        config_lib.load(RunConfig, None, ["model.family=llama"])
    with pytest.raises(ConfigError, match="fractions"):
        config_lib.load(RunConfig, None, ["data.synth.fractions=[0.5,0.1]"])


def test_overriding_one_key_keeps_the_rest_of_a_sections_default():
    from factory.pipeline import RunConfig

    cfg = config_lib.load(RunConfig, None, ["train.stages.1_sft.max_steps=7", "train.lora.r=8"])
    default = RunConfig()
    assert cfg.train.stages["1_sft"] == {**default.train.stages["1_sft"], "max_steps": 7}
    assert cfg.train.stages["4_clgrpo"] == default.train.stages["4_clgrpo"]
    assert cfg.train.lora.r == 8 and cfg.train.lora.alpha == default.train.lora.alpha
