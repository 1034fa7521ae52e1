"""``ccsr`` console script: a thin dispatcher over ``ccsr.commands.<name>`` modules.

Each command module defines ``HELP`` (one line), ``add_arguments(parser)`` and ``main(args) -> int``,
optionally ``EPILOG`` (text shown verbatim after the options), and imports heavy libraries (torch,
diffusers, pyiqa) only inside ``main``, so ``ccsr --help`` is fast.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys

from ccsr.quiet import VERBOSE_ENV, quiet_libraries

#: command name -> module; the module is imported only when the command runs or asks for help.
COMMANDS: dict[str, str] = {
    "upscale": "ccsr.commands.upscale",
    "evaluate": "ccsr.commands.evaluate",
    "stability": "ccsr.commands.stability",
    "train": "ccsr.commands.train",
    "app": "ccsr.commands.app",
    "data": "ccsr.commands.data",
    "bench": "ccsr.commands.bench",
}


def _available() -> dict[str, str]:
    out = {}
    for name, mod in COMMANDS.items():
        if importlib.util.find_spec(mod) is not None:
            out[name] = mod
    return out


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    from ccsr import __version__

    parser = argparse.ArgumentParser(
        prog="ccsr", description="Content-consistent diffusion super-resolution (CCSR-v2)."
    )
    parser.add_argument("--version", action="version", version=f"ccsr {__version__}")
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="show the libraries' own warnings and progress bars (same as CCSR_VERBOSE=1)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, mod_name in _available().items():
        if only is not None and name != only:
            sub.add_parser(name, help=f"(run 'ccsr {name} --help')")
            continue
        mod = importlib.import_module(mod_name)
        p = sub.add_parser(name, help=mod.HELP, description=mod.HELP)
        epilog = getattr(mod, "EPILOG", None)
        if epilog is not None:  # laid out by hand: keep its line breaks
            p.formatter_class, p.epilog = argparse.RawDescriptionHelpFormatter, epilog
        mod.add_arguments(p)
        p.set_defaults(_module=mod)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--verbose" in argv:  # accepted before or after the command name
        argv.remove("--verbose")
        os.environ[VERBOSE_ENV] = "1"  # inherited by accelerate's worker processes too
    quiet_libraries()
    chosen = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(chosen if chosen in COMMANDS else None)
    args = parser.parse_args(argv)
    if getattr(args, "_module", None) is None:
        parser.print_help()
        return 2
    return int(args._module.main(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
