"""`anomaly train`: normal driving in, one calibrated model file out."""

import os
from pathlib import Path
from typing import Annotated

import typer

from anomaly.config import (
    CalibrationConfig,
    Combination,
    DetectorConfig,
    ModelConfig,
    PreprocessConfig,
    TrainConfig,
    default_signals,
)
from cli.options import (
    DeviceOpt,
    ProgressOpt,
    SignalsOpt,
    Sources,
    friendly_errors,
    parse_roi,
    parse_signals,
    quiet,
    report_source_error,
    sampling_options,
    with_options,
)
from footage.sampling import SamplingConfig

_TRAIN = TrainConfig.model_fields
_MODEL = ModelConfig.model_fields
_CAL = CalibrationConfig.model_fields

# The option that sets each setting `anomaly train --resume` may find changed (anomaly.training.train.ResumeMismatch).
OPTION_OF_SETTING = {
    "train.batch_size": "--batch-size",
    "train.seed": "--seed",
    "train.holdout_fraction": "--holdout",
    "train.max_train_frames": "--max-train-frames",
    "train.defect_fraction": "--defects",
    "train.restore_defects": "--restore-defects",
    "train.finder_updates": "--finder-updates",
    "train.loss.adversarial": "--adversarial-weight",
    "preprocess.width": "--width",
    "preprocess.height": "--height",
    "preprocess.roi": "--roi",
    "model.latent_channels": "--latent-channels",
    "model.finder_widths": "--finder/--no-finder",
    "model.finder_count": "--finders",
}


@friendly_errors
@with_options(sampling=sampling_options)
def train(
    sources: Sources,
    out: Annotated[Path, typer.Option("--out", "-o", help="model file to write")],
    sampling: SamplingConfig,
    steps: Annotated[int, typer.Option(min=1, help="training steps")] = _TRAIN["steps"].default,
    batch_size: Annotated[int, typer.Option(min=2, help="frames per training step")] = _TRAIN["batch_size"].default,
    seed: int = _TRAIN["seed"].default,
    width: Annotated[int, typer.Option(help="model input width")] = PreprocessConfig.model_fields["width"].default,
    height: Annotated[int, typer.Option(help="model input height")] = PreprocessConfig.model_fields["height"].default,
    roi: Annotated[str | None, typer.Option(help="region of interest x0,y0,x1,y1 as fractions")] = None,
    latent_channels: int = ModelConfig.model_fields["latent_channels"].default,
    adversarial_weight: float = TrainConfig().loss.adversarial,
    holdout: Annotated[float, typer.Option(help=_TRAIN["holdout_fraction"].description)] = _TRAIN[
        "holdout_fraction"
    ].default,
    target_far: Annotated[float, typer.Option(help="false-alarm rate on normal frames the threshold aims at")] = _CAL[
        "target_false_alarm_rate"
    ].default,
    max_train_frames: int = _TRAIN["max_train_frames"].default,
    signals: SignalsOpt = None,
    cell_step: Annotated[
        int,
        typer.Option(
            min=1,
            max=_CAL["error_pool"].default,  # cells further apart than their side would leave gaps
            help="model pixels between the heat map's 20-pixel cells (and `image`'s): 2 finds small objects better, "
            "4 scores about a sixth faster (README, *Cells every 2 pixels*); with --resume on a finished run it "
            "recalibrates the model with them",
        ),
    ] = _CAL["error_stride"].default,
    combine: Annotated[
        Combination,
        typer.Option(help=_CAL["combination"].description),
    ] = _CAL["combination"].default,
    scene_baseline: Annotated[
        bool,
        typer.Option(
            help="measure each score from the normal level of the held-out frames that look like the frame "
            "(README, *The scene baseline*; needs two or more training sources); with --resume on a finished run "
            "it recalibrates the model with or without it"
        ),
    ] = _CAL["scene_baseline"].default,
    defects: Annotated[
        float,
        typer.Option(
            min=0.0,
            max=1.0,
            help="share of each batch given generic synthetic defects (restored by the autoencoder, "
            "found by the discriminator)",
        ),
    ] = _TRAIN["defect_fraction"].default,
    restore_defects: Annotated[
        bool,
        typer.Option(
            help="train the autoencoder to restore the --defects (DRAEM); --no-restore-defects: only the "
            "discriminator learns them, the autoencoder sees clean frames"
        ),
    ] = _TRAIN["restore_defects"].default,
    finder_updates: Annotated[int, typer.Option(min=1, max=8, help=_TRAIN["finder_updates"].description)] = _TRAIN[
        "finder_updates"
    ].default,
    finders: Annotated[int, typer.Option(min=1, max=8, help=_MODEL["finder_count"].description)] = _MODEL[
        "finder_count"
    ].default,
    finder: Annotated[
        bool,
        typer.Option(
            help="train the defect finders beside the pair (their `defect_local` signal is in the default score); "
            "--no-finder trains and scores faster, with `disc_patch` in its place (see the README's fleet figures)"
        ),
    ] = True,
    resume: Annotated[bool, typer.Option(help="continue from the training state saved beside --out")] = False,
    device: DeviceOpt = "auto",
    progress: ProgressOpt = True,
) -> None:
    """Train the autoencoder/discriminator pair (and the defect finder beside it) on normal driving and
    calibrate its threshold.

    Runs unchanged under `torchrun --nproc-per-node N`: DistributedDataParallel, one checkpoint from rank 0.
    """
    from anomaly.checkpoint import CheckpointError
    from anomaly.device import resolve_device
    from anomaly.preprocess import Preprocessor
    from anomaly.training.distributed import context_from_env, process_group
    from anomaly.training.train import (
        ResumeMismatch,
        TrainingData,
        check_resumable,
        train_detector,
        training_state_path,
    )
    from footage.ingest import expand_sources
    from footage.training_frames import load_named_prepared_frames

    default = DetectorConfig()
    config = DetectorConfig(
        preprocess=PreprocessConfig(width=width, height=height, roi=parse_roi(roi)),
        model=ModelConfig(
            widths=default.model.widths,
            latent_channels=latent_channels,
            finder_widths=default.model.finder_widths if finder else None,
            finder_count=finders,
        ),
        train=TrainConfig(
            steps=steps,
            batch_size=batch_size,
            seed=seed,
            holdout_fraction=holdout,
            max_train_frames=max_train_frames,
            defect_fraction=defects,
            restore_defects=restore_defects,
            finder_updates=finder_updates,
            device=device,  # type: ignore[arg-type]
            loss=default.train.loss.model_copy(update={"adversarial": adversarial_weight}),
        ),
        calibration=CalibrationConfig(
            target_false_alarm_rate=target_far,
            error_stride=cell_step,
            signals=parse_signals(signals) if signals else default_signals(finder),
            combination=combine,
            scene_baseline=scene_baseline,
        ),
    )
    torch_device = resolve_device(device)  # fail before reading any video
    state_path = training_state_path(out)
    if resume and state_path.exists():  # as must a state these options may not continue
        try:
            check_resumable(state_path, config)
        except ResumeMismatch as exc:
            raise CheckpointError(exc.describe(lambda name: OPTION_OF_SETTING.get(name, name))) from None
    context = context_from_env(os.environ)  # torchrun's RANK/WORLD_SIZE/LOCAL_RANK; rank 0 of 1 otherwise
    echo = typer.echo if context.is_main else quiet
    named = load_named_prepared_frames(
        expand_sources(sources),
        sampling,
        Preprocessor(config.preprocess),
        max_train_frames,
        report_source_error if context.is_main else quiet,
    )
    data = TrainingData.split([f for _, f in named], holdout, names=[Path(n).name for n, _ in named])
    if context.enabled:
        echo(f"training on {context.world_size} processes (DistributedDataParallel)")
    with process_group(context, context.device(torch_device)):
        train_detector(
            config, data, out, resume=resume, progress=progress and context.is_main, log=echo, context=context
        )
    echo(f"wrote {out}")
