"""Colour and smoothness augmentation of training crops, for autoencoders trained on a few photographs.

ccsr-tiny's autoencoder, trained on 10-21 photographs, reproduced only the colours those held: a flat
saturated yellow (230, 200, 40) came back with green 71 levels low (orange), a dark red 46 levels off in
red; and smooth gradients came back with colour blotches that the colour fix cannot remove
(``ccsr/assets/ccsr-tiny.md``, "Diagnosis"). An autoencoder's latent is the vocabulary of every later
stage, so it must cover every colour and every smooth ramp, not only the training set's. Two
augmentations, both pure functions of a numpy ``Generator`` (so crops stay a function of
``(seed, epoch, index)``):

* :func:`recolor`: a random channel permutation, hue rotation and saturation scale of a crop, keeping its
  structure (texture, edges) and luma roughly.
* :func:`smooth_patch`: a synthetic crop, flat or a bilinear ramp between four random corner colours.
"""

from __future__ import annotations

import numpy as np

# RGB <-> YIQ (NTSC): Y is luma, (I, Q) the chroma plane a hue rotation turns.
_RGB_TO_YIQ = np.array(
    [[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], dtype=np.float32
)
_YIQ_TO_RGB = np.linalg.inv(_RGB_TO_YIQ).astype(np.float32)


def recolor(
    crop: np.ndarray, rng: np.random.Generator, saturation: tuple[float, float] = (0.5, 1.6)
) -> np.ndarray:
    """``crop`` ``(H, W, 3)`` float in ``[0, 1]`` with its channels permuted, its hue rotated by a
    uniform angle and its chroma scaled by a factor in ``saturation``; clipped to ``[0, 1]``."""
    perm = rng.permutation(3)
    angle = rng.uniform(0.0, 2.0 * np.pi)
    scale = rng.uniform(*saturation)
    c, s = np.cos(angle) * scale, np.sin(angle) * scale
    chroma = np.array([[1, 0, 0], [0, c, -s], [0, s, c]], dtype=np.float32)
    matrix = _YIQ_TO_RGB @ chroma @ _RGB_TO_YIQ
    out = crop[..., perm] @ matrix.T
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def smooth_patch(size: int, rng: np.random.Generator, flat_prob: float = 0.5) -> np.ndarray:
    """A ``(size, size, 3)`` float32 crop in ``[0, 1]``: with probability ``flat_prob`` one colour (each corner
    within 3 % of it), else a bilinear ramp between four uniform random corner colours."""
    corners = rng.uniform(0.0, 1.0, size=(2, 2, 3)).astype(np.float32)
    if rng.random() < flat_prob:
        corners = corners[0, 0] * rng.uniform(0.97, 1.03, size=(2, 2, 1)).astype(np.float32)
    t = np.linspace(0.0, 1.0, size, dtype=np.float32)
    ty, tx = t[:, None, None], t[None, :, None]
    top = corners[0, 0] * (1 - tx) + corners[0, 1] * tx
    bottom = corners[1, 0] * (1 - tx) + corners[1, 1] * tx
    return np.clip(top * (1 - ty) + bottom * ty, 0.0, 1.0).astype(np.float32)
