"""The networks, top to bottom: encoder, decoder, patch discriminator, defect finder, and the model that holds them.

The autoencoder learns to reconstruct normal driving; what it cannot reconstruct is unusual. The
discriminator is trained to tell real frames from reconstructions, which pushes reconstructions
towards sharp, realistic frames (plain squared error alone gives blurry ones whose error is high
everywhere) and gives a second, independent opinion about each frame. The defect finder is trained
apart from that pair, only to mark where generic synthetic defects (`anomaly.training.defects`) were
pasted into normal frames: a segmenter of foreign content, as DRAEM's discriminative network, that
sees a soft smear or a pasted object the reconstruction hides.

Input: normalised RGB, N x 3 x H x W with H and W multiples of 8. Nothing here knows about files,
calibration or thresholds: see `anomaly.scoring` for how a frame's score is computed.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

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


class DefectFinder(nn.Module):
    """Three halvings and one doubling with a skip from the second stage: a defect logit per H/4 x W/4 cell.

    Its own network, not a head of the discriminator: trained on the defects, the discriminator's
    changed judgement reached the autoencoder through the adversarial loss and cost it small objects
    and torn frames (README, the `--defects` table); the finder's training touches nothing else.
    """

    def __init__(self, widths: tuple[int, int, int]) -> None:
        super().__init__()
        w1, w2, w3 = widths
        self.stages = nn.ModuleList([down(3, w1), down(w1, w2), down(w2, w3)])
        self.middle = nn.Sequential(nn.Conv2d(w3, w3, 3, padding=1, bias=False), nn.BatchNorm2d(w3), nn.LeakyReLU(0.2))
        self.up = up(w3, w2)
        self.head = nn.Conv2d(2 * w2, 1, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits, N x 1 x H/4 x W/4; high means 'something was put here that does not belong'."""
        quarter = self.stages[1](self.stages[0](x))
        eighth = self.middle(self.stages[2](quarter))
        return self.head(torch.cat([self.up(eighth), quarter], dim=1))


class DefectFinders(nn.Module):
    """Several defect finders, trained apart (each from its own initialisation on its own synthetic
    defects), whose logits are averaged: one finder's map depends much on its training run.

    On the fleet benchmark (README, *Two defect finders, averaged*) the finders of three training seeds found
    small objects at 0.84, 0.78 and 0.77 alone (`defect_local`) and any two of them averaged at 0.83 to
    0.87; lens mud 0.88-0.91 -> 0.93-0.95. What one finder marks by chance in a normal frame the other
    seldom marks in the same place, while a real defect is marked by both. Three by default: over four
    training seeds a third moved the good seeds by 0.001-0.002 and lifted the weakest 0.845 -> 0.868
    (README, *Three finders*).
    """

    def __init__(self, widths: tuple[int, int, int], count: int) -> None:
        super().__init__()
        self.members = nn.ModuleList([DefectFinder(widths) for _ in range(count)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The members' mean logit, N x 1 x H/4 x W/4."""
        logits = self.members[0](x)
        for member in self.members[1:]:
            logits = logits + member(x)
        return logits / len(self.members)


@dataclass
class ModelOutput:
    recon: torch.Tensor  # N x 3 x H x W, same normalisation as the input
    latent: torch.Tensor  # N x latent x H/8 x W/8
    stage_features: list[torch.Tensor]  # each encoder stage's activations, fine to coarse
    disc_logits: torch.Tensor | None  # N x 1 x H/8 x W/8, the discriminator's view of the *input* (when asked)
    defect_logits: torch.Tensor | None = None  # N x 1 x H/4 x W/4, the defect finder's (when asked and present)


class AutoencoderGAN(nn.Module):
    """The trained pair, and the defect finders beside it (None in models trained before them).
    `forward` is everything scoring needs from the networks in one pass."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.discriminator = Discriminator(cfg)
        self.finder = DefectFinders(cfg.finder_widths, cfg.finder_count) if cfg.finder_widths is not None else None

    @property
    def finders(self) -> list[DefectFinder]:
        """Each defect finder, trained on its own (none without them)."""
        return [] if self.finder is None else list(self.finder.members)

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        latent, _ = self.encoder(x)
        return self.decoder(latent)

    def forward(self, x: torch.Tensor, discriminate: bool = True, find_defects: bool = True) -> ModelOutput:
        """`discriminate=False` skips the discriminator (about a fifth of the pass) and `find_defects=False`
        the defect finder (about as much) when no signal needs them."""
        latent, feats = self.encoder(x)
        return ModelOutput(
            recon=self.decoder(latent),
            latent=latent,
            stage_features=feats,
            disc_logits=self.discriminator(x) if discriminate else None,
            defect_logits=self.finder(x) if find_defects and self.finder is not None else None,
        )


def fused_for_inference(model: AutoencoderGAN) -> AutoencoderGAN:
    """An inference-only copy of `model` with each batch norm folded into the convolution before it.

    In eval mode a batch norm is a fixed per-channel scale and shift, which the convolution's
    weights and bias can absorb: the same outputs (to float rounding, about 1e-6) without a pass
    over every activation: the networks' pass 1.84 -> 1.38 ms a frame on the CPU (batch 16, one
    thread), a whole `score_prepared` of the fleet model 3.18 -> 3.05. The copy cannot be trained or
    saved as a checkpoint (its parameters are not the model's): scoring runs it, the model itself is
    kept for both.
    """
    fused = copy.deepcopy(model).eval()
    for module in fused.modules():
        if not isinstance(module, nn.Sequential):
            continue
        for i in range(len(module) - 1):
            conv, norm = module[i], module[i + 1]
            if isinstance(conv, nn.Conv2d | nn.ConvTranspose2d) and isinstance(norm, nn.BatchNorm2d):
                module[i] = fuse_conv_bn_eval(conv, norm, transpose=isinstance(conv, nn.ConvTranspose2d))
                module[i + 1] = nn.Identity()
    return fused.requires_grad_(False)
