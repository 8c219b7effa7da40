"""Training on several processes: torchrun's environment, sharding, gathering, and two-process gloo
runs on the CPU (through the API, and through `torchrun ... anomaly train` end to end)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from factories import TINY, road_frames, write_video

from anomaly.calibrate import calibrate
from anomaly.checkpoint import load_detector
from anomaly.config import DetectorConfig
from anomaly.preprocess import Preprocessor
from anomaly.scoring import score_frames, score_prepared
from anomaly.training.distributed import (
    DistributedContext,
    all_gather_rows,
    context_from_env,
    process_group,
    shard,
    shard_bounds,
)
from anomaly.training.train import TrainingData, train_detector

pytestmark = pytest.mark.slow  # Ray instances and process groups: minutes, not seconds

WORLD = 2


def quiet(_: str) -> None:
    pass


def tiny_config(steps: int) -> DetectorConfig:
    return TINY.model_copy(update={"train": TINY.train.model_copy(update={"steps": steps, "checkpoint_every": 2})})


def prepared_data(config: DetectorConfig) -> TrainingData:
    pre = Preprocessor(config.preprocess)
    return TrainingData.split([np.stack([pre.prepare(f) for f in road_frames(50, seed=5)])], 0.3)


# --- the context and sharding -----------------------------------------------------------------


def test_context_from_torchrun_environment():
    assert context_from_env({}) == DistributedContext(rank=0, world_size=1, local_rank=0)
    ctx = context_from_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "MASTER_PORT": "29500"})
    assert (ctx.rank, ctx.world_size, ctx.local_rank, ctx.enabled, ctx.is_main) == (3, 4, 1, True, False)
    assert ctx.device(torch.device("cuda")) == torch.device("cuda", 1)
    assert ctx.device(torch.device("cpu")) == torch.device("cpu")
    with pytest.raises(ValueError, match="need 0 <= rank < world size"):
        context_from_env({"RANK": "2", "WORLD_SIZE": "2"})
    with pytest.raises(ValueError, match="could not be read"):
        context_from_env({"RANK": "zero", "WORLD_SIZE": "2"})


@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_shards_are_contiguous_nearly_equal_and_cover_everything_in_order(world):
    for n in range(10):
        items = np.arange(n)
        shards = [shard(items, DistributedContext(rank=r, world_size=world)) for r in range(world)]
        assert np.array_equal(np.concatenate(shards), items)
        assert max(map(len, shards)) - min(map(len, shards)) <= 1
        assert [shard_bounds(n, DistributedContext(rank=r, world_size=world))[0] for r in range(world)] == [
            sum(map(len, shards[:r])) for r in range(world)
        ]


def test_batch_must_have_a_frame_for_every_process(tmp_path):
    config = tiny_config(steps=1)
    config = config.model_copy(update={"train": config.train.model_copy(update={"batch_size": 2})})
    with pytest.raises(ValueError, match="smaller than the 3 training processes"):
        train_detector(
            config,
            prepared_data(config),
            tmp_path / "m.pt",
            progress=False,
            log=quiet,
            context=DistributedContext(rank=0, world_size=3),
        )
    assert not (tmp_path / "m.pt").exists()


# --- two gloo processes through the API --------------------------------------------------------


def _rank_main(rank: int, init_file: str, model_path: str, out: str) -> None:
    """One rank: gather unequal shards, calibrate a fixed model, train 4 steps, and 2 + resume to 4."""
    torch.set_num_threads(1)
    ctx = DistributedContext(rank=rank, world_size=WORLD, local_rank=rank)
    out_dir = Path(out)
    with process_group(ctx, torch.device("cpu"), init_method=f"file://{init_file}"):
        rows = torch.arange(rank + 1, dtype=torch.float64).unsqueeze(1) + 10 * rank
        gathered = all_gather_rows(rows, ctx)
        detector = load_detector(Path(model_path), torch.device("cpu"))
        data = prepared_data(TINY)
        cal = calibrate(detector, data, ctx)
        straight = train_detector(tiny_config(4), data, out_dir / "straight.pt", progress=False, log=quiet, context=ctx)
        train_detector(tiny_config(2), data, out_dir / "resumed.pt", progress=False, log=quiet, context=ctx)
        resumed = train_detector(
            tiny_config(4), data, out_dir / "resumed.pt", resume=True, progress=False, log=quiet, context=ctx
        )
    torch.save(
        {
            "gathered": gathered,
            "calibration": cal.to_state(),
            "straight": straight.model.state_dict(),
            "resumed": resumed.model.state_dict(),
            "threshold": straight.threshold,
        },
        out_dir / f"rank{rank}.pt",
    )


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> dict:
    """Runs `_rank_main` on two spawned processes joined by gloo; returns what each rank saw."""
    d = tmp_path_factory.mktemp("ddp")
    config = tiny_config(6)
    model_path = d / "fixed.pt"
    train_detector(config, prepared_data(config), model_path, progress=False, log=quiet)
    mp.spawn(_rank_main, args=(str(d / "rendezvous"), str(model_path), str(d)), nprocs=WORLD, join=True)
    results = [torch.load(d / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    return {"dir": d, "model": model_path, "ranks": results}


def assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_gather_joins_unequal_shards_in_rank_order(two_ranks):
    for result in two_ranks["ranks"]:
        assert result["gathered"].squeeze(1).tolist() == [0.0, 10.0, 11.0]


def test_sharded_calibration_equals_single_process_calibration(two_ranks):
    detector = load_detector(two_ranks["model"], torch.device("cpu"))
    single = calibrate(detector, prepared_data(TINY)).to_state()
    for result in two_ranks["ranks"]:
        cal = result["calibration"]
        assert_same_state(cal["stats"], single["stats"])
        assert (cal["loc"], cal["scale"], cal["threshold"], cal["n_frames"]) == (
            single["loc"],
            single["scale"],
            single["threshold"],
            single["n_frames"],
        )


def test_ranks_stay_in_step_and_resume_is_exact(two_ranks):
    rank0, rank1 = two_ranks["ranks"]
    assert_same_state(rank0["straight"], rank1["straight"])
    assert_same_state(rank0["straight"], rank0["resumed"])
    assert_same_state(rank1["straight"], rank1["resumed"])
    saved = load_detector(two_ranks["dir"] / "straight.pt", torch.device("cpu"))
    assert_same_state(saved.model.state_dict(), rank0["straight"])
    assert saved.threshold == rank0["threshold"] == rank1["threshold"]
    # one writer: no temporary files left beside the checkpoints
    assert not [p.name for p in two_ranks["dir"].iterdir() if p.name.startswith(".")]
    scores = score_prepared(saved, prepared_data(TINY).holdout)
    assert np.isfinite(scores.score).all()


# --- torchrun end to end -----------------------------------------------------------------------


def torchrun_train(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(WORLD), "--standalone"]
    cmd += ["-m", "anomaly", "train", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.slow
def test_torchrun_two_process_training_writes_a_checkpoint_that_loads_scores_and_resumes(tmp_path):
    a = write_video(tmp_path / "a.mp4", road_frames(40, seed=1))
    b = write_video(tmp_path / "b.avi", road_frames(40, seed=2))
    model = tmp_path / "model.pt"
    common = [str(a), str(b), "--out", str(model), "--batch-size", "8", "--width", "32", "--height", "24"]
    common += ["--device", "cpu", "--no-progress"]
    first = torchrun_train(*common, "--steps", "3")
    assert first.returncode == 0, first.stderr[-3000:]
    assert "training on 2 processes" in first.stdout
    assert first.stdout.count(f"wrote {model}") == 1  # rank 0 speaks (and writes) for both
    detector = load_detector(model, torch.device("cpu"))
    scores = score_frames(detector, list(road_frames(6, seed=9)))
    assert len(scores) == 6 and np.isfinite(scores.score).all() and np.isfinite(detector.threshold)

    second = torchrun_train(*common, "--steps", "5", "--resume")
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"resuming from step 3 ({model.with_suffix('.state.pt')})" in second.stdout
    assert "trained 5 steps" in second.stdout
    resumed = load_detector(model, torch.device("cpu"))
    assert np.isfinite(score_frames(resumed, list(road_frames(6, seed=9))).score).all()
