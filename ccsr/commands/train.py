"""``ccsr train STAGE --config FILE --set key=value ...``: train one stage with the accelerate loop.

Works unchanged under ``accelerate launch -m ccsr train STAGE ...`` (multi-GPU, multi-node, DeepSpeed
or FSDP as configured by ``accelerate config``).
"""

from __future__ import annotations

import argparse
import sys

from ccsr.training.stages import DEFAULT_CONFIGS, STAGES, load_stage

HELP = (
    "train a CCSR stage (stage1: the ControlNet, stage2: the VAE decoder; autoencoder / base: from scratch; "
    "tiny-recipe: all of ccsr-tiny) from a yaml config; --set overrides any key"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("stage", choices=sorted(STAGES), help="which stage to train")
    parser.add_argument(
        "--config", default=None, metavar="YAML", help="config file (default: configs/train/<stage>.yaml)"
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set optimizer.learning_rate=1e-5 --set data.train=[a,b] (repeatable)",
    )
    parser.add_argument(
        "--resume",
        default=None,
        metavar="CKPT",
        help="'latest' or a checkpoint folder: restore models, optimizers, LR schedules, RNG and data position "
        "(same as --set train.resume_from_checkpoint=...)",
    )
    parser.add_argument(
        "--print-config",
        action="store_true",
        help="print the resolved config as yaml and exit without training",
    )


def main(args: argparse.Namespace) -> int:
    from ccsr.config import ConfigError, config_to_dict, load_config

    config_cls, run = load_stage(args.stage)
    overrides = list(args.overrides)
    if args.resume is not None:
        overrides.append(f"train.resume_from_checkpoint={args.resume}")
    try:
        cfg = load_config(config_cls, args.config or DEFAULT_CONFIGS[args.stage], overrides)
    except ConfigError as e:
        print(f"ccsr train {args.stage}: config error: {e}", file=sys.stderr)
        return 2
    if args.print_config:
        import yaml

        print(yaml.safe_dump(config_to_dict(cfg), sort_keys=False), end="")
        return 0
    result = run(cfg)
    if result.export_dir is not None:
        print(f"trained {result.global_step} steps; exported {result.export_dir}")
    return 0


def main_for_stage(stage: str, argv: list[str] | None = None) -> int:
    """Entry point of the thin ``train/<stage>.py`` scripts: the same arguments, stage fixed."""
    parser = argparse.ArgumentParser(prog=f"train/{stage}.py", description=HELP)
    add_arguments(parser)
    return main(parser.parse_args([stage, *(sys.argv[1:] if argv is None else argv)]))
