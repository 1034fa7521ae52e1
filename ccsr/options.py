"""The settings a user picks by name, and their checks, in one light module (no torch), so that the CLI,
the configs and the model folders' ``inference_defaults.json`` validate them before any model loads.
"""

from __future__ import annotations

#: Colour correction of the decoded image against the canvas (docs/algorithm.md §1.9). The authors' script
#: spells "none" ``nofix``; both are accepted.
COLOR_FIXES: tuple[str, ...] = ("adain", "wavelet", "none")
COLOR_FIX_ALIASES: dict[str, str] = {"nofix": "none"}
#: Post-processing order (docs/algorithm.md §1.13): the authors' 8-bit order, or colour fix and resize in float.
POSTPROCESS_MODES: tuple[str, ...] = ("reference", "float")
#: Tile blending window (docs/algorithm.md §1.11): the authors' off-centre Gaussian, or a centred one.
TILE_WINDOWS: tuple[str, ...] = ("reference", "symmetric")
#: Levels of the wavelet colour fix (docs/algorithm.md §1.9): the decoded image keeps its finest ``levels``
#: bands, the canvas gives the rest. The authors' code uses 5; a model may recommend fewer.
WAVELET_LEVELS = 5
MAX_WAVELET_LEVELS = 10


def _check(what: str, value: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"{what}={value!r} must be one of {choices}")
    return value


def check_color_fix(method: str) -> str:
    """``method`` as one of :data:`COLOR_FIXES` (``nofix`` -> ``none``); ``ValueError`` otherwise."""
    return _check("color_fix", COLOR_FIX_ALIASES.get(method, method), COLOR_FIXES)


def check_postprocess(mode: str) -> str:
    return _check("postprocess", mode, POSTPROCESS_MODES)


def check_tile_window(window: str) -> str:
    return _check("tile_window", window, TILE_WINDOWS)


def wavelet_levels_ok(levels: object) -> bool:
    """Whether ``levels`` is an int in ``1..MAX_WAVELET_LEVELS``."""
    return isinstance(levels, int) and not isinstance(levels, bool) and 1 <= levels <= MAX_WAVELET_LEVELS


def check_wavelet_levels(levels: object) -> int:
    """``levels`` if :func:`wavelet_levels_ok`; ``ValueError`` otherwise."""
    if not wavelet_levels_ok(levels):
        raise ValueError(f"wavelet_levels={levels!r} must be an integer from 1 to {MAX_WAVELET_LEVELS}")
    return levels  # type: ignore[return-value]
