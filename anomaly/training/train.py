"""Training the autoencoder and discriminator together, then calibrating on held-out frames.

Input is already-prepared frames (RGB uint8 at the model's size) split per source into a training
part and a held-out tail; `footage.training_frames` reads videos into that shape. Training is
reproducible by seed, and resumable: every `checkpoint_every` steps a training state (weights,
optimisers, step) is written beside the model, and the batch drawn at step k depends only on
(seed, k), so a resumed run continues exactly where the interrupted one was.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel
from torch import nn

from anomaly.calibrate import calibrate
from anomaly.checkpoint import (
    FORMAT_VERSION,
    KIND_TRAINING_STATE,
    CheckpointError,
    atomic_torch_save,
    network_weights,
    parse_config,
    read_checkpoint,
    save_detector,
)
from anomaly.config import DetectorConfig, LossConfig
from anomaly.detector import Detector
from anomaly.device import resolve_device
from anomaly.model import AutoencoderGAN
from anomaly.progress import progress_bar
from anomaly.training.defects import add_defects
from anomaly.training.distributed import (
    SINGLE_PROCESS,
    DistributedContext,
    DistributedGAN,
    barrier,
    broadcast_state,
    shard,
)


@dataclass
class TrainingData:
    """Prepared frames: `train` fits the networks and normal statistics; `holdout` (later in time) calibrates."""

    train: np.ndarray  # N x H x W x 3 uint8 RGB
    holdout: np.ndarray
    holdout_sources: tuple[str, ...] = ()  # names of the sources the held-out frames come from
    holdout_groups: np.ndarray | None = None  # per held-out frame, its index in holdout_sources
    # per training frame, its source's index in holdout_sources (-1: a source too short to hold any out)
    train_groups: np.ndarray | None = None

    @classmethod
    def split(
        cls, per_source: list[np.ndarray], holdout_fraction: float, names: list[str] | None = None
    ) -> TrainingData:
        """Hold out the last `holdout_fraction` of each source, so calibration frames are unseen scenery."""
        names = names or [f"source {i + 1}" for i in range(len(per_source))]
        train, holdout, held_names, groups, train_groups = [], [], [], [], []
        for name, frames in zip(names, per_source, strict=True):
            n_hold = int(round(len(frames) * holdout_fraction))
            if len(frames) < 4 or n_hold < 1:
                train.append(frames)
                train_groups.append(np.full(len(frames), -1))
                continue
            train.append(frames[:-n_hold])
            train_groups.append(np.full(len(frames) - n_hold, len(held_names)))
            holdout.append(frames[-n_hold:])
            groups.append(np.full(n_hold, len(held_names)))
            held_names.append(name)
        if not holdout:
            raise ValueError("too few frames to hold any out for calibration; give longer or more sources")
        return cls(
            train=np.concatenate(train),
            holdout=np.concatenate(holdout),
            holdout_sources=tuple(held_names),
            holdout_groups=np.concatenate(groups),
            train_groups=np.concatenate(train_groups),
        )


def training_state_path(model_path: Path) -> Path:
    return Path(model_path).with_suffix(".state.pt")


def train_step(
    model: AutoencoderGAN | DistributedGAN,
    x: torch.Tensor,
    opt_g: torch.optim.Optimizer,
    opt_d: torch.optim.Optimizer,
    loss: LossConfig,
    damaged: torch.Tensor | None = None,
    masks: torch.Tensor | None = None,
    restore: bool = True,
) -> dict[str, float]:
    """One discriminator update, then one autoencoder update (non-saturating GAN loss).

    With `damaged` frames (synthetic defects under `masks`, see `anomaly.training.defects`) the
    discriminator also learns to mark their defective patches as not real, and with `restore` the
    autoencoder reconstructs the clean `x` from them (else it reconstructs `x` from `x`, as without
    defects, and only the discriminator ever sees one).
    """
    disc = model.discriminator
    recon = model.reconstruct(x if damaged is None or not restore else damaged)

    disc.requires_grad_(True)
    real_logits, fake_logits = disc(x), disc(recon.detach())
    loss_d = F.binary_cross_entropy_with_logits(
        real_logits, torch.ones_like(real_logits)
    ) + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))
    if damaged is not None and masks is not None and loss.defect > 0:
        defect_logits = disc(damaged)
        covered = F.adaptive_avg_pool2d(masks, defect_logits.shape[-2:])
        target = 1.0 - (2.0 * covered).clamp(0, 1)  # a patch half covered or more is all "not real"
        loss_d = loss_d + loss.defect * F.binary_cross_entropy_with_logits(defect_logits, target)
    opt_d.zero_grad(set_to_none=True)
    loss_d.backward()
    opt_d.step()

    disc.requires_grad_(False)
    fooled = disc(recon)
    mse = (recon - x).pow(2).mean()
    l1 = (recon - x).abs().mean()
    adv = F.binary_cross_entropy_with_logits(fooled, torch.ones_like(fooled))
    loss_g = mse + loss.l1 * l1 + loss.adversarial * adv
    opt_g.zero_grad(set_to_none=True)
    loss_g.backward()
    opt_g.step()
    disc.requires_grad_(True)
    return {"mse": mse.item(), "adv": adv.detach().item(), "d": loss_d.detach().item()}


def finder_step(finder: nn.Module, damaged: torch.Tensor, masks: torch.Tensor, opt: torch.optim.Optimizer) -> float:
    """One update of a defect finder (the optimiser may hold other finders' parameters too: they have no
    gradient here, so it leaves them alone) on frames given generic synthetic defects under `masks`: a cell
    half covered or more is all "defect", less is partly (the discriminator's rule, the other way up)."""
    logits = finder(damaged)
    covered = F.adaptive_avg_pool2d(masks, logits.shape[-2:])
    loss = F.binary_cross_entropy_with_logits(logits, (2.0 * covered).clamp(0, 1))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.detach().item()


def make_optimisers(model: AutoencoderGAN, config: DetectorConfig) -> tuple[torch.optim.Adam, ...]:
    """The autoencoder's, the discriminator's and (when the model has them) the defect finders' (one
    optimiser: each finder's update leaves the others' parameters without a gradient)."""
    ae_params = list(model.encoder.parameters()) + list(model.decoder.parameters())
    opt_g = torch.optim.Adam(ae_params, lr=config.train.lr, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(model.discriminator.parameters(), lr=config.train.disc_lr, betas=(0.5, 0.999))
    if model.finder is None:
        return opt_g, opt_d
    return opt_g, opt_d, torch.optim.Adam(model.finder.parameters(), lr=config.train.finder_lr)


def save_training_state(path: Path, config: DetectorConfig, model: AutoencoderGAN, opts: tuple, step: int) -> None:
    atomic_torch_save(
        {
            "kind": KIND_TRAINING_STATE,
            "format_version": FORMAT_VERSION,
            "config": config.model_dump(mode="json"),
            "step": step,
            "state_dict": model.state_dict(),
            "opt_g": opts[0].state_dict(),
            "opt_d": opts[1].state_dict(),
            **({"opt_f": opts[2].state_dict()} if len(opts) > 2 else {}),
        },
        path,
    )


class ResumeMismatch(CheckpointError):
    """A saved training state that the wanted settings may not continue; `changes` maps each differing
    setting's dotted name ("train.batch_size") to its (saved, wanted) values, so an edge that knows its
    own names for the settings (the CLI's options) can say it in those."""

    def __init__(self, path: Path, changes: dict[str, tuple[Any, Any]], why: str) -> None:
        self.path, self.changes, self.why = path, changes, why
        super().__init__(self.describe())

    def describe(self, label: Callable[[str], str] = str) -> str:
        listed = "; ".join(f"{label(name)} {old!r} then, {new!r} now" for name, (old, new) in self.changes.items())
        return f"{self.path} {self.why} ({listed}): resume with the same settings or start afresh without --resume"


def setting_changes(saved: BaseModel, wanted: BaseModel, prefix: str = "") -> dict[str, tuple[Any, Any]]:
    """Every setting (leaf of the nested configs) whose value differs, by dotted name."""
    out: dict[str, tuple[Any, Any]] = {}
    for name in type(saved).model_fields:
        old, new = getattr(saved, name), getattr(wanted, name)
        if isinstance(old, BaseModel) and isinstance(new, BaseModel):
            out |= setting_changes(old, new, f"{prefix}{name}.")
        elif old != new:
            out[f"{prefix}{name}"] = (old, new)
    return out


# Training settings that may change on --resume: how long to train, where, how often to save.
RESUMABLE_CHANGES = frozenset({"train.steps", "train.device", "train.checkpoint_every"})


def check_resumable(path: Path, config: DetectorConfig) -> dict[str, Any]:
    """The training state at `path`, if `config` may continue it; else `ResumeMismatch`, naming the settings.

    The networks' shape, the preprocessing and the seed may never change (the weights or each step's
    draws would not fit them); the other training settings only once no step is left, when a resumed run
    trains nothing and only recalibrates; calibration settings always may. Cheap (the weights are small),
    so the CLI checks before it decodes any footage.
    """
    state = read_checkpoint(path, KIND_TRAINING_STATE)
    changes = setting_changes(parse_config(state, path), config)
    fixed = {k: v for k, v in changes.items() if k.startswith(("preprocess.", "model.")) or k == "train.seed"}
    if fixed:
        raise ResumeMismatch(path, fixed, "was written with other model, preprocessing or seed settings")
    training = {k: v for k, v in changes.items() if k.startswith("train.") and k not in RESUMABLE_CHANGES}
    if training and int(state["step"]) < config.train.steps:
        raise ResumeMismatch(path, training, "was trained with other training settings, which the steps left would mix")
    return state


def restore_training_state(path: Path, config: DetectorConfig, model: AutoencoderGAN, opts: tuple) -> int:
    """Load a saved training state into `model`/`opts`; returns the step to continue from."""
    state = check_resumable(path, config)
    model.load_state_dict(network_weights(state))
    opts[0].load_state_dict(state["opt_g"])
    opts[1].load_state_dict(state["opt_d"])
    if len(opts) > 2:
        opts[2].load_state_dict(state["opt_f"])
    return int(state["step"])


def step_generator(seed: int, step: int) -> torch.Generator:
    """Randomness of one step depends on (seed, step) only, so a resumed run repeats it exactly."""
    return torch.Generator().manual_seed(seed * 1_000_003 + step)


def finder_generator(seed: int, step: int, draw: int) -> torch.Generator:
    """The defects of a step's further finder updates (draw 1, 2, ...: the first finder's further updates,
    then each other finder's): drawn apart from the step's generator, so the pair trains on the same
    draws whatever the number of finders and updates."""
    return step_generator(seed + 500_009 * draw, step)


def random_shift(x: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Translate each frame by up to `max_shift` pixels (reflect-padded), a cheap guard against memorising."""
    if max_shift <= 0:
        return x
    _, _, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4, mode="reflect")
    offsets = torch.randint(0, 2 * max_shift + 1, (len(x), 2), generator=generator).tolist()
    return torch.stack([padded[i, :, dy : dy + h, dx : dx + w] for i, (dy, dx) in enumerate(offsets)])


def train_detector(
    config: DetectorConfig,
    data: TrainingData,
    out: Path,
    *,
    resume: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = print,
    context: DistributedContext = SINGLE_PROCESS,
) -> Detector:
    """Train, calibrate and write the model to `out`. Returns the calibrated detector.

    Under torchrun (`context` from `anomaly.training.distributed.context_from_env`) every rank calls this with
    the same data; each trains on its shard of every batch, and only rank 0 writes files.
    """
    tc = config.train
    if len(data.train) < 2:
        raise ValueError("need at least two training frames")
    if tc.batch_size < context.world_size:
        raise ValueError(f"batch size {tc.batch_size} is smaller than the {context.world_size} training processes")
    device = context.device(resolve_device(tc.device))
    torch.manual_seed(tc.seed)
    detector = Detector.new(config, device)
    model = detector.model
    opts = make_optimisers(model, config)
    state_path = training_state_path(out)
    start = 0
    if resume and state_path.exists():
        start = restore_training_state(state_path, config, model, opts)
        log(f"resuming from step {start} ({state_path})")
    elif resume:
        log(f"no training state at {state_path}; starting from step 0")

    nets = DistributedGAN(model, device) if context.enabled else model
    model.train()
    bar = progress_bar(
        iterable=range(start, tc.steps), initial=start, total=tc.steps, desc="train", unit="step", enabled=progress
    )
    losses: dict[str, float] = {}
    for step in bar:
        g = step_generator(tc.seed, step)
        idx = torch.randint(len(data.train), (tc.batch_size,), generator=g).numpy()
        x = random_shift(detector.preprocessor.to_tensor(data.train[idx], device), tc.shift_pixels, g)
        finder_losses = []
        # the finders first, so their defects do not depend on the pair's options; each trains on its
        # own draws (the first finder's first from the step's generator, as it always has), so they
        # learn apart, and the pair's draws are the same whatever the finders' count and updates
        for m, finder in enumerate(nets.finders):
            for k in range(tc.finder_updates):
                draw = m * tc.finder_updates + k
                damaged, masks = add_defects(
                    x, tc.finder_defect_fraction, g if draw == 0 else finder_generator(tc.seed, step, draw)
                )
                loss = finder_step(finder, shard(damaged, context), shard(masks, context), opts[2])
            finder_losses.append(loss)
        if tc.defect_fraction > 0:
            damaged, masks = add_defects(x, tc.defect_fraction, g)
            losses = train_step(
                nets,
                shard(x, context),
                opts[0],
                opts[1],
                config.train.loss,
                shard(damaged, context),
                shard(masks, context),
                restore=tc.restore_defects,
            )
        else:
            losses = train_step(nets, shard(x, context), opts[0], opts[1], config.train.loss)
        if finder_losses:
            losses["finder"] = sum(finder_losses) / len(finder_losses)
        bar.set_postfix({k: f"{v:.4f}" for k, v in losses.items()}, refresh=False)
        if (step + 1) % tc.checkpoint_every == 0 and step + 1 < tc.steps and context.is_main:
            save_training_state(state_path, config, model, opts, step + 1)
    bar.close()
    broadcast_state(model, context)
    if context.is_main:
        save_training_state(state_path, config, model, opts, max(start, tc.steps))

    detector = detector.frozen()  # calibrated with the networks every later scoring runs
    calibration = calibrate(detector, data, context)
    detector = detector.with_calibration(calibration)
    if context.is_main:
        save_detector(detector, out)
    barrier(context)  # the files exist when any rank returns
    log(
        f"trained {tc.steps} steps on {len(data.train)} frames; calibrated on {len(data.holdout)} held-out frames; "
        f"threshold {calibration.threshold:.3f} for a {calibration.target_false_alarm_rate:.1%} false-alarm rate"
        + (f"; final losses {', '.join(f'{k} {v:.4f}' for k, v in losses.items())}" if losses else "")
    )
    rates = calibration.holdout_false_alarms
    if len(rates) > 1:
        log(
            "held-out false alarms per source, each scored as a drive never seen (statistics and threshold "
            "fitted without it): " + ", ".join(f"{name} {rate:.1%}" for name, rate in rates.items())
        )
    elif rates:
        log(f"held-out false alarms of the one source (a later stretch of it): {next(iter(rates.values())):.1%}")
    if calibration.scene is not None:
        log(
            f"scores measured from the normal level of the {calibration.scene.k} nearest of "
            f"{len(calibration.scene.scores)} held-out frames (scene baseline: the `scene_level` column)"
        )
    return detector
