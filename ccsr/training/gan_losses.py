"""Hinge GAN losses of CCSR-v2 stage 2 (docs/algorithm.md §4.2), as pure functions of discriminator logits.

The reference (``train_ccsr_stage2.py``) uses the hinge formulation of Lim & Ye (2017),
"Geometric GAN", as in StyleGAN-T / ADD whose projected discriminator it borrows:

* discriminator: ``mean(relu(1 - D(real))) + mean(relu(1 + D(fake)))``
* generator: ``-mean(D(fake))``

Logits of any shape are accepted (the projected discriminator returns one logit per token and
head, ``(B, N)``); means run over every element.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def hinge_discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """``mean(relu(1 - real)) + mean(relu(1 + fake))``, a scalar.

    Real logits above +1 and fake logits below -1 cost nothing: the discriminator only has to
    separate the two classes by a margin, which keeps it from over-fitting the few real samples.
    """
    return F.relu(1.0 - real_logits.float()).mean() + F.relu(1.0 + fake_logits.float()).mean()


def hinge_generator_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """``-mean(fake)``, a scalar: the generator pushes its samples' logits up without a margin."""
    return -fake_logits.float().mean()
