"""ccsr.config: strict, typed yaml configs with --set overrides (no torch needed)."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from ccsr.config import ConfigError, LoopConfig, config_to_dict, load_config, parse_override, save_config
from ccsr.data.degradation_config import DegradationConfig
from ccsr.training.stage1_config import Stage1Config

REPO = Path(__file__).resolve().parents[1]
STAGE1_YAML = str(REPO / "configs/train/stage1.yaml")
REQUIRED = ["train.output_dir=out"]


@dataclass(frozen=True)
class Inner:
    size: int = 8
    name: str | None = None


@dataclass(frozen=True)
class Outer:
    lr: float
    seeds: tuple[int, ...] = (0,)
    pair: tuple[float, float] = (0.0, 1.0)
    flag: bool = False
    mode: str = "a"
    inner: Inner = field(default_factory=Inner)


def test_unknown_key_lists_valid_keys_and_nearest(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config(Stage1Config, STAGE1_YAML, ["optimizer.lerning_rate=1e-4"])
    msg = str(e.value)
    assert msg.startswith("optimizer.lerning_rate: unknown key (did you mean optimizer.learning_rate?)")
    for key in ("learning_rate", "lr_scheduler", "adam_beta1", "use_8bit_adam"):
        assert key in msg
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {pretrained: x}\ndata: {train: [d]}\ntrain: {output_dir: o}\nvalidation: {}\n")
    with pytest.raises(
        ConfigError, match=r"^validation: unknown key; valid: model, data, train, optimizer, objective"
    ):
        load_config(Stage1Config, bad)


def test_values_are_coerced_to_field_types():
    cfg = load_config(Outer, None, ["lr=1e-5", "seeds=[1,2,3]", "pair=[1,2]", "flag=true", "inner.size=16.0"])
    assert cfg.lr == 1e-5 and isinstance(cfg.lr, float)  # "1e-5" is a string for PyYAML
    assert cfg.seeds == (1, 2, 3) and cfg.pair == (1.0, 2.0) and cfg.flag is True and cfg.inner.size == 16
    assert load_config(Outer, None, ["lr=1", "seeds=7", "inner.name=null"]).seeds == (7,)
    # YAML 1.1 reads a bare `no` as False; a choice spelled "no" still gets it.
    assert load_config(LoopConfig, None, ["output_dir=o", "mixed_precision=no"]).mixed_precision == "no"
    for override, expected in [
        ("lr=fast", "lr: expected float"),
        ("inner.size=2.5", "inner.size: expected int"),
        ("flag=maybe", "flag: expected bool"),
        ("pair=[1,2,3]", "pair: expected 2 values"),
        ("inner=3", "inner: expected a section"),
    ]:
        with pytest.raises(ConfigError, match=expected):
            load_config(Outer, None, ["lr=1", override])
    with pytest.raises(ConfigError, match="mixed_precision: 'fp8' is not one of 'no', 'fp16', 'bf16'"):
        load_config(LoopConfig, None, ["output_dir=o", "mixed_precision=fp8"])
    with pytest.raises(ConfigError, match="lr: required key missing"):
        load_config(Outer, None, [])
    with pytest.raises(ConfigError, match="expected key=value"):
        parse_override("lr")


def test_cross_field_checks_quote_the_numbers():
    with pytest.raises(
        ConfigError, match=r"objective: start_timestep=600 must be in \(round\(1000 \* t_max\) = 667, 999\]"
    ):
        load_config(Stage1Config, STAGE1_YAML, REQUIRED + ["objective.start_timestep=600"])
    with pytest.raises(ConfigError, match="data: resolution=500 must be a positive multiple of 8"):
        load_config(Stage1Config, STAGE1_YAML, REQUIRED + ["data.resolution=500"])
    with pytest.raises(ConfigError, match="data: val_lr and val_hr go together"):
        load_config(Stage1Config, STAGE1_YAML, REQUIRED + ["data.val_lr=some/dir"])
    with pytest.raises(ConfigError, match=r"loss weights \(0.0, 0.0, 0.0, 0.0\)"):
        load_config(
            Stage1Config,
            STAGE1_YAML,
            ["objective.weight_eps=0", "objective.weight_x0=0", "objective.weight_x0_renoised=0"],
        )
    with pytest.raises(ConfigError, match=r"second: kernel_prob has 2 values for 6 kernel types"):
        load_config(DegradationConfig, None, ["second.kernel_prob=[0.5,0.5]"])
    with pytest.raises(ConfigError, match=r"first: jpeg_range=\(60.0, 120.0\): JPEG quality is at most 100"):
        load_config(DegradationConfig, None, ["first.jpeg_range=[60,120]"])


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(Stage1Config, STAGE1_YAML, ["optimizer.learning_rate=2e-5", "data.train=[a,b]"])
    path = save_config(cfg, tmp_path / "run" / "config.yaml")
    assert load_config(Stage1Config, path) == cfg
    assert yaml.safe_load(path.read_text())["data"]["train"] == ["a", "b"]
    assert config_to_dict(cfg)["optimizer"]["learning_rate"] == 2e-5


def test_shipped_configs_load_and_degradation_yaml_matches_defaults():
    cfg = load_config(Stage1Config, STAGE1_YAML)
    assert (cfg.optimizer.learning_rate, cfg.objective.t_max, cfg.objective.start_timestep) == (
        5e-5,
        0.6667,
        999,
    )
    assert cfg.train.batch_size * cfg.train.gradient_accumulation_steps * 4 == 96  # the reference's 4 GPUs
    assert load_config(DegradationConfig, cfg.data.degradation) == DegradationConfig()


def test_config_modules_import_no_torch():
    code = (
        "import sys, ccsr.config, ccsr.training.stage1_config, ccsr.data.degradation_config; "
        "print(sorted(m for m in ('torch', 'diffusers', 'basicsr') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_cli_reports_config_errors_before_loading_anything(capsys):
    from ccsr.cli import main

    assert main(["train", "stage1", "--set", "train.lerning_rate=1"]) == 2
    err = capsys.readouterr().err
    assert "train.lerning_rate: unknown key" in err and "max_train_steps" in err
    assert main(["train", "stage1", "--print-config", "--resume", "latest", "--set", "train.seed=3"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["train"]["resume_from_checkpoint"] == "latest" and printed["train"]["seed"] == 3


def test_thin_train_script_uses_the_same_parser():
    out = subprocess.run(
        [sys.executable, "train/stage1.py", "--print-config", "--set", "train.seed=5", "--resume", "latest"],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
    ).stdout
    printed = yaml.safe_load(out)
    assert printed["train"]["seed"] == 5 and printed["train"]["resume_from_checkpoint"] == "latest"
    bad = subprocess.run(
        [sys.executable, "train/stage1.py", "--set", "model.vea=x"], capture_output=True, text=True, cwd=REPO
    )
    assert bad.returncode == 2 and "model.vea: unknown key (did you mean model.vae?)" in bad.stderr
