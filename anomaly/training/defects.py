"""Generic synthetic defects for training: foreign content pasted into normal frames under noise-shaped masks.

After DRAEM (Zavrtanik et al., ICCV 2021) and CutPaste (Li et al., CVPR 2021), which find local
defects without pretrained networks by synthesising them. Here the defects are deliberately
generic, not any kind the detector is tested on: the mask is a thresholded, upsampled random-noise
field (blobs of any shape, covering a few percent of the frame), and what fills it is either a
shifted, possibly flipped part of *another* frame of the batch, or a smooth random-colour noise
texture. Training then uses them twice:

- the autoencoder gets the damaged frame and must reconstruct the clean one, so it learns to
  replace what does not belong with plausible road instead of copying it, and foreign content
  stands out in the error map;
- the discriminator learns to mark the damaged patches as not real (its target per patch is one
  minus the share of the patch the mask covers), so its patch map localises foreign content.

Everything is drawn from the step's generator, so a resumed run repeats a step exactly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def noise_masks(n: int, height: int, width: int, generator: torch.Generator) -> torch.Tensor:
    """N x 1 x H x W masks in 0..1: random blobs from a coarse noise field, soft-edged, 2-15% of the frame."""
    masks = []
    for _ in range(n):
        cells = int(torch.randint(2, 6, (1,), generator=generator))  # coarseness: 2..5 cells down the frame
        field = torch.rand(1, 1, cells, max(2, cells * width // height), generator=generator)
        field = F.interpolate(field, size=(height, width), mode="bicubic", align_corners=False)
        cover = float(torch.empty(1).uniform_(0.02, 0.15, generator=generator))
        cut = torch.quantile(field.flatten(), 1.0 - cover)
        soft = torch.sigmoid((field - cut) * 40.0)
        masks.append(soft)
    return torch.cat(masks)


def textures(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Foreign content for each frame: a shifted (and maybe flipped) other frame, or a smooth colour noise."""
    n, c, h, w = x.shape
    out = torch.empty_like(x)
    for i in range(n):
        if n > 1 and float(torch.rand(1, generator=generator)) < 0.5:
            j = (i + int(torch.randint(1, n, (1,), generator=generator))) % n
            dy = int(torch.randint(-h // 2, h // 2 + 1, (1,), generator=generator))
            dx = int(torch.randint(-w // 2, w // 2 + 1, (1,), generator=generator))
            src = torch.roll(x[j], shifts=(dy, dx), dims=(1, 2))
            if float(torch.rand(1, generator=generator)) < 0.5:
                src = torch.flip(src, dims=(2,))
            out[i] = src
        else:
            grain = int(torch.randint(2, 17, (1,), generator=generator))
            noise = torch.randn(1, c, max(1, h // grain), max(1, w // grain), generator=generator)
            noise = F.interpolate(noise, size=(h, w), mode="bilinear", align_corners=False)[0]
            colour = torch.randn(c, 1, 1, generator=generator) * 1.5
            out[i] = (colour + noise * float(torch.empty(1).uniform_(0.2, 1.0, generator=generator))).to(x.dtype)
    return out


def add_defects(x: torch.Tensor, fraction: float, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(damaged frames, masks N x 1 x H x W): `fraction` of the frames get a defect, the others are unchanged."""
    n, _, h, w = x.shape
    chosen = torch.rand(n, generator=generator) < fraction
    masks = torch.zeros(n, 1, h, w, dtype=x.dtype)
    if not chosen.any():
        return x, masks.to(x.device)
    k = int(chosen.sum())
    m = noise_masks(k, h, w, generator) * torch.empty(k, 1, 1, 1).uniform_(0.6, 1.0, generator=generator)
    masks[chosen] = m.to(x.dtype)
    masks = masks.to(x.device)
    damaged = x * (1 - masks) + textures(x.cpu(), generator).to(x.device) * masks
    return damaged, masks
