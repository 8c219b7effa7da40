"""The networks, top to bottom: encoder, decoder, patch discriminator, and the pair that holds them.

The autoencoder learns to reconstruct normal driving; what it cannot reconstruct is unusual. The
discriminator is trained to tell real frames from reconstructions, which pushes reconstructions
towards sharp, realistic frames (plain squared error alone gives blurry ones whose error is high
everywhere) and gives a second, independent opinion about each frame.

Input: normalised RGB, N x 3 x H x W with H and W multiples of 8. Nothing here knows about files,
calibration or thresholds: see `anomaly.scoring` for how a frame's score is computed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from anomaly.config import ModelConfig


def down(c_in: int, c_out: int, norm: bool = True) -> nn.Sequential:
    """Halve the resolution: 4x4 stride-2 convolution."""
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, 4, stride=2, padding=1, bias=not norm)]
    if norm:
        layers.append(nn.BatchNorm2d(c_out))
    layers.append(nn.LeakyReLU(0.2, inplace=True))
    return nn.Sequential(*layers)


def up(c_in: int, c_out: int) -> nn.Sequential:
    """Double the resolution: 4x4 stride-2 transposed convolution."""
    return nn.Sequential(
        nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class Encoder(nn.Module):
    """Three halvings, then a narrow 3x3 projection: the bottleneck is the channel count."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        w1, w2, w3 = cfg.widths
        self.stages = nn.ModuleList([down(3, w1), down(w1, w2), down(w2, w3)])
        self.to_latent = nn.Conv2d(w3, cfg.latent_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Returns the latent map (N x latent x H/8 x W/8) and each stage's activations."""
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        return self.to_latent(x), feats


class Decoder(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        w1, w2, w3 = cfg.widths
        self.net = nn.Sequential(
            nn.Conv2d(cfg.latent_channels, w3, 3, padding=1, bias=False),
            nn.BatchNorm2d(w3),
            nn.ReLU(inplace=True),
            up(w3, w2),
            up(w2, w1),
            nn.ConvTranspose2d(w1, 3, 4, stride=2, padding=1),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


class Discriminator(nn.Module):
    """PatchGAN-style: one real/fake logit per H/8 x W/8 cell, so it judges local texture."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        d1, d2, d3 = cfg.disc_widths
        self.net = nn.Sequential(
            down(3, d1, norm=False),
            down(d1, d2, norm=False),
            down(d2, d3, norm=False),
            nn.Conv2d(d3, 1, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits, N x 1 x H/8 x W/8; high means 'looks like a real normal frame'."""
        return self.net(x)


@dataclass
class ModelOutput:
    recon: torch.Tensor  # N x 3 x H x W, same normalisation as the input
    latent: torch.Tensor  # N x latent x H/8 x W/8
    stage_features: list[torch.Tensor]  # each encoder stage's activations, fine to coarse
    disc_logits: torch.Tensor | None  # N x 1 x H/8 x W/8, the discriminator's view of the *input* (when asked)


class AutoencoderGAN(nn.Module):
    """The trained pair. `forward` is everything scoring needs from the networks in one pass."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.discriminator = Discriminator(cfg)

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        latent, _ = self.encoder(x)
        return self.decoder(latent)

    def forward(self, x: torch.Tensor, discriminate: bool = True) -> ModelOutput:
        """`discriminate=False` skips the discriminator (about a fifth of the pass) when no signal needs it."""
        latent, feats = self.encoder(x)
        return ModelOutput(
            recon=self.decoder(latent),
            latent=latent,
            stage_features=feats,
            disc_logits=self.discriminator(x) if discriminate else None,
        )
