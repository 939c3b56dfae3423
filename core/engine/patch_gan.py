"""The patch discriminator of an autoencoder run (``[autoencoder_training] discriminator``):
pix2pix's PatchGAN (Isola et al. 2017) as taming-transformers and LDM train their first
stages (Esser et al. 2021; Rombach et al. 2022), with the hinge loss and the adaptive
weight of the adversarial term.

*Notation*: ``x`` images, ``r`` reconstructions, ``D`` the discriminator (one logit per
patch). Discriminator loss (hinge): ``(mean relu(1 - D(x)) + mean relu(1 + D(r))) / 2``;
generator loss: ``-mean D(r)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class PatchDiscriminator(nn.Module):
    """``layers`` stride-2 4×4 convolutions (widths ``channels``, doubling up to 8×), a
    stride-1 one, then a 1-channel 4×4 convolution: logits ``(B, 1, h, w)``, ``h = H / 2^layers
    - 2``. LeakyReLU(0.2); BatchNorm after all but the first and last; weights N(0, 0.02)."""

    def __init__(self, in_channels: int, *, channels: int = 64, layers: int = 3) -> None:
        super().__init__()
        widths = [channels * min(2**i, 8) for i in range(layers + 1)]
        parts: list[nn.Module] = [
            nn.Conv2d(in_channels, widths[0], 4, stride=2, padding=1),
            nn.LeakyReLU(0.2),
        ]
        for i in range(1, layers + 1):
            stride = 2 if i < layers else 1
            parts += [
                nn.Conv2d(widths[i - 1], widths[i], 4, stride=stride, padding=1, bias=False),
                nn.BatchNorm2d(widths[i]),
                nn.LeakyReLU(0.2),
            ]
        parts.append(nn.Conv2d(widths[-1], 1, 4, stride=1, padding=1))
        self.main = nn.Sequential(*parts)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, 0.0, 0.02)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.normal_(module.weight, 1.0, 0.02)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x)


def hinge_discriminator_loss(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """``(mean relu(1 - D(x)) + mean relu(1 + D(r))) / 2`` of the logits."""
    return 0.5 * (F.relu(1.0 - real).mean() + F.relu(1.0 + fake).mean())


def adaptive_weight(
    reconstruction_loss: torch.Tensor, generator_loss: torch.Tensor, at: torch.Tensor
) -> torch.Tensor:
    """LDM's ``|grad rec| / (|grad adv| + 1e-4)``, clamped to [0, 1e4] and detached: the
    gradient norms of the two losses with respect to ``at`` (LDM takes the decoder's last
    layer weights; here the reconstructions, which every autoencoder has)."""
    (rec,) = torch.autograd.grad(reconstruction_loss, at, retain_graph=True)
    (adv,) = torch.autograd.grad(generator_loss, at, retain_graph=True)
    return (rec.norm() / (adv.norm() + 1e-4)).clamp(0.0, 1e4).detach()
