"""The ccsr-tiny recipe (``ccsr train tiny-recipe``): every stage of CCSR from scratch, one command.

    data (scikit-image photographs, or ``data_dir`` from ``ccsr data tiny-set``) -> autoencoder -> base UNet -> stage 1 (ControlNet)
        -> stage 2 (VAE decoder, GAN) -> export (single-folder release layout)

Each stage is the ordinary ``ccsr train <stage>`` run on its own config (``configs/tiny/*.yaml``); the
recipe only fills in the paths that link them (data, the previous stage's export). A stage whose
export already exists is skipped (``redo: false``), so a recipe stopped half-way continues where it
stopped; its own checkpoints resume with ``--set "overrides.all=[train.resume_from_checkpoint=latest]"``.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path

from ccsr.config import load_config
from ccsr.options import WAVELET_LEVELS
from ccsr.training.loop import TrainResult
from ccsr.training.scratch_config import RECIPE_STAGES, RecipeConfig
from ccsr.training.stages import load_stage

Config = RecipeConfig  # what `ccsr train tiny-recipe` loads
logger = logging.getLogger(__name__)

#: The export of each stage, relative to its output folder: present = the stage is done.
EXPORTS = {"autoencoder": "vae", "base": "model", "stage1": "controlnet", "stage2": "vae"}


def stage_overrides(
    cfg: RecipeConfig, root: Path, data: Path, backbones: tuple[Path, Path]
) -> dict[str, list[str]]:
    """The ``key=value`` list of every stage: linking paths first, then the user's overrides."""
    listing, evals = data / "train" / "train.txt", data / "eval"
    val = [f"data.val_lr={evals / 'lr_realesrgan'}", f"data.val_hr={evals / 'gt'}"]
    base_model = root / "base" / EXPORTS["base"]
    links = {
        "autoencoder": [f"data.train=[{listing}]"],
        "base": [f"data.train=[{listing}]", f"model.vae={root / 'autoencoder' / EXPORTS['autoencoder']}"],
        "stage1": [f"data.train=[{listing}]", f"model.pretrained={base_model}", *val],
        "stage2": [
            f"data.train=[{listing}]",
            f"model.pretrained={base_model}",
            f"model.controlnet={root / 'stage1' / EXPORTS['stage1']}",
            f"discriminator.feature_network={backbones[0]}",
            f"discriminator.condition_network={backbones[1]}",
            *val,
        ],
    }
    user = cfg.overrides
    return {
        name: [f"train.output_dir={root / name}", *links[name], *user.all, *getattr(user, name)]
        for name in RECIPE_STAGES
    }


def export_release(
    root: Path,
    release: Path,
    dtype: str = "float32",
    color_fix: str = "adain",
    border_pad: int = 0,
    wavelet_levels: int = WAVELET_LEVELS,
) -> Path:
    """Assemble base model + stage-1 ControlNet + stage-2 VAE into one folder (``layout="single"``),
    written beside ``release`` and renamed into place; every component reloads strictly first.
    ``dtype="float16"`` halves the files (training and inference stay float32: loaders upcast).
    ``color_fix``, ``border_pad`` and ``wavelet_levels`` other than the reference's are recorded in
    ``inference_defaults.json`` (the release's defaults)."""
    import torch

    from ccsr.atomic import replace_dir_atomically
    from ccsr.models.loading import load_components, write_inference_defaults
    from ccsr.models.tiny import save_release_layout

    parts = load_components(
        root / "base" / EXPORTS["base"],
        controlnet=root / "stage1" / EXPORTS["stage1"],
        vae=root / "stage2" / EXPORTS["stage2"],
        torch_dtype=getattr(torch, dtype),
    )
    comps = (parts.unet, parts.controlnet, parts.vae, parts.text_encoder, parts.tokenizer, parts.scheduler)
    release.parent.mkdir(parents=True, exist_ok=True)

    def write(tmp: Path) -> None:
        save_release_layout(comps, tmp, layout="single", record_prediction=True)
        extra = {"wavelet_levels": wavelet_levels} if wavelet_levels != WAVELET_LEVELS else {}
        if color_fix != "adain" or border_pad or extra:
            write_inference_defaults(tmp, color_fix, border_pad=border_pad, **extra)

    return replace_dir_atomically(release, write)


def run(cfg: RecipeConfig) -> TrainResult:
    """Run every stage not yet done, then export; returns the total optimizer steps of this run."""
    from ccsr.config import save_config
    from ccsr.data.tiny_data import write_eval_sets, write_training_set
    from ccsr.models.discriminator import save_tiny_backbones

    root = Path(cfg.output_dir)
    root.mkdir(parents=True, exist_ok=True)
    save_config(cfg, root / "recipe.yaml")
    if cfg.data_dir is not None:  # built by `ccsr data tiny-set`
        data = Path(cfg.data_dir)
        for need in (data / "train" / "train.txt", data / "eval" / "manifest.json"):
            if not need.is_file():
                raise FileNotFoundError(
                    f"data_dir: {need} is missing; build it with ccsr data tiny-set {data}"
                )
    else:
        data = root / "data"
        write_training_set(data / "train", cfg.train_min_side)
        if cfg.redo or not (data / "eval" / "manifest.json").is_file():
            write_eval_sets(data / "eval")
    # No pretrained DINO offline: the stage-2 discriminator runs on random miniature backbones (seeded).
    backbones = save_tiny_backbones(root / "backbones", seed=0)
    overrides = stage_overrides(cfg, root, data, backbones)
    files = {name: getattr(cfg.stages, name) for name in RECIPE_STAGES}

    # Resolve every config before training anything: a typo in stage 2 fails now, not an hour later.
    configs = {}
    for name in RECIPE_STAGES:
        config_cls, _ = load_stage(name)
        configs[name] = load_config(config_cls, files[name], overrides[name])

    total, timings = 0, {}
    for name in RECIPE_STAGES:
        done = root / name / EXPORTS[name]
        if done.exists() and not cfg.redo:
            logger.info("tiny-recipe: %s already exported (%s); skipping", name, done)
            continue
        if cfg.redo and (root / name).exists():
            shutil.rmtree(root / name)
        _, run_stage = load_stage(name)
        start = time.perf_counter()
        result = run_stage(configs[name])
        timings[name] = round(time.perf_counter() - start, 1)
        total += result.global_step
        logger.info("tiny-recipe: %s done in %.0f s (%d steps)", name, timings[name], result.global_step)

    release = Path(cfg.release_dir) if cfg.release_dir is not None else root / "ccsr-tiny"
    export_release(root, release, cfg.release_dtype, cfg.color_fix, cfg.border_pad, cfg.wavelet_levels)
    log = root / "recipe_timings.json"
    previous = json.loads(log.read_text()) if log.is_file() else {}
    log.write_text(json.dumps({**previous, **timings}, indent=2) + "\n")
    return TrainResult(total, [], release)
