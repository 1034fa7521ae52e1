"""Subcommands of the ``ccsr`` console script (see :mod:`ccsr.cli`)."""
