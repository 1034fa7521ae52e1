"""What an installed user meets outside the repository: shipped model names, packaged configs, a quiet
console."""

from __future__ import annotations

import filecmp
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
LOAD_TINY = "from ccsr.pipeline import CCSRPipeline; CCSRPipeline.from_pretrained('tiny')"
SAVE_TINY = LOAD_TINY.replace(
    "CCSRPipeline.from_pretrained('tiny')", "CCSRPipeline.from_pretrained('tiny').save_pretrained"
)
CHATTER = ("should be kept in float32", "Loading weights", "gemm_4bit", "Writing model shards")


def test_the_packaged_configs_are_the_repositorys_configs():
    from ccsr.config import PACKAGED_CONFIGS

    top = sorted(p.relative_to(REPO / "configs") for p in (REPO / "configs").rglob("*.yaml"))
    packaged = sorted(p.relative_to(PACKAGED_CONFIGS) for p in PACKAGED_CONFIGS.rglob("*.yaml"))
    assert top and top == packaged
    _, mismatch, errors = filecmp.cmpfiles(REPO / "configs", PACKAGED_CONFIGS, [str(p) for p in top], False)
    assert not mismatch and not errors


def test_default_configs_load_from_any_folder(tmp_path, monkeypatch):
    from ccsr.config import ConfigError, load_config
    from ccsr.models.tiny import TinySpec

    monkeypatch.chdir(tmp_path)
    assert load_config(TinySpec, "configs/tiny/arch.yaml") == load_config(
        TinySpec, REPO / "configs/tiny/arch.yaml"
    )
    (tmp_path / "configs" / "tiny").mkdir(parents=True)
    (tmp_path / "configs/tiny/arch.yaml").write_text("{}\n")  # a user's own file wins over the packaged one
    assert load_config(TinySpec, "configs/tiny/arch.yaml") == TinySpec()
    with pytest.raises(ConfigError, match="configs/tiny/nope.yaml not found"):
        load_config(TinySpec, "configs/tiny/nope.yaml")
    proc = subprocess.run(
        [sys.executable, "-m", "ccsr", "train", "stage1", "--print-config", "--set", "train.seed=7"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert "seed: 7" in proc.stdout


def test_from_pretrained_knows_the_shipped_model():
    from ccsr.models.shipped import TINY_MODEL_DIR
    from ccsr.pipeline import CCSRPipeline

    pipe = CCSRPipeline.from_pretrained("tiny")
    assert pipe.component_paths.root == TINY_MODEL_DIR
    with pytest.raises(FileNotFoundError, match="model folder tinyy does not exist"):
        CCSRPipeline.from_pretrained("tinyy")


@pytest.mark.parametrize("verbose", [False, True])
def test_library_chatter_is_silenced_unless_verbose(verbose, tmp_path):
    # conftest quiets the libraries for the suite's own output: start from what a user's shell has
    hidden = ("CCSR_VERBOSE", "TRANSFORMERS_VERBOSITY", "DIFFUSERS_VERBOSITY")
    env = {k: v for k, v in os.environ.items() if k not in hidden}
    if verbose:
        env["CCSR_VERBOSE"] = "1"
    code = f"{SAVE_TINY}({str(tmp_path / 'saved')!r})"  # load and save: both bars
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "saved" / "text_encoder").is_dir()
    if verbose:  # the note diffusers logs on every cast, and the loading and writing bars, come back
        assert CHATTER[0] in proc.stderr and CHATTER[1] in proc.stderr and CHATTER[3] in proc.stderr
    else:
        assert not [c for c in CHATTER if c in proc.stderr], proc.stderr


def test_cli_verbose_flag_is_accepted_before_or_after_the_command():
    for argv in (["--verbose", "train", "--help"], ["train", "--help", "--verbose"]):
        proc = subprocess.run([sys.executable, "-m", "ccsr", *argv], capture_output=True, text=True)
        assert proc.returncode == 0 and "stage1" in proc.stdout, proc.stderr
