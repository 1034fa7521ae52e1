"""Library output that is noise to a ccsr user, silenced at its source, in one place.

What is silenced, and why it is noise:

* ``bitsandbytes``' probe for optional CPU kernels ("Failed to load CPU gemm_4bit_forward ..."), logged
  whenever diffusers imports it (pyiqa installs it); ccsr uses bitsandbytes only for its 8-bit optimiser.
* diffusers' "There are modules in ControlNetModel that should be kept in float32: []", logged by every
  ``model.to(dtype)`` even when that list is empty (nothing is kept in float32, nothing is lost).
* transformers' "Loading weights" and "Writing model shards" progress bars while the text encoder loads or
  is saved (a fraction of a second).

Warnings that carry information (missing or unexpected weights, a deprecated argument) are left alone.
``ccsr --verbose`` or ``CCSR_VERBOSE=1`` turns all of this off, for the CLI and the Python API alike.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator

VERBOSE_ENV = "CCSR_VERBOSE"


class _DropEmptyFloat32Note(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "should be kept in float32: []" not in record.getMessage()


_EMPTY_FLOAT32_NOTE = _DropEmptyFloat32Note()


def verbose_requested() -> bool:
    """True when the user asked for the libraries' own output (``CCSR_VERBOSE`` set and not ``0``)."""
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0")


def quiet_libraries() -> None:
    """Install the filters above, or remove them when verbose (idempotent; imports nothing heavy).

    Runs when ``ccsr`` is imported, and again in the CLI once ``--verbose`` has been read."""
    bnb = logging.getLogger("bitsandbytes")
    modeling = logging.getLogger("diffusers.models.modeling_utils")
    if verbose_requested():
        bnb.setLevel(logging.NOTSET)
        modeling.removeFilter(_EMPTY_FLOAT32_NOTE)
        return
    bnb.setLevel(logging.ERROR)
    if _EMPTY_FLOAT32_NOTE not in modeling.filters:
        modeling.addFilter(_EMPTY_FLOAT32_NOTE)


@contextlib.contextmanager
def quiet_loading() -> Iterator[None]:
    """Around model loading or saving: :func:`quiet_libraries`, and no transformers progress bar (restored
    after)."""
    quiet_libraries()
    if verbose_requested() or "transformers" not in sys.modules:
        yield
        return
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()
