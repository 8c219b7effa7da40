"""`anomaly score --engine ray`: chunked decoding keeps exactly the local engine's frames; on a local
Ray instance the per-source files equal the local engine's rows byte for byte, bad sources are
reported in the manifest, reruns redo only what is missing, and a crashed worker's chunk is retried."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import ray
from factories import TINY, road_frames, with_square, write_video
from typer.testing import CliRunner

from anomaly.preprocess import Preprocessor
from anomaly.profiles import FLEET, unlike_footage_warning
from batch.local import score_sources
from batch.ray.chunks import OPEN_END, decode_chunk, plan_source
from batch.ray.config import RayScoreConfig
from batch.ray.engine import plan_resources, score_on_ray
from batch.ray.manifest import MANIFEST_NAME, check_out_dir, output_names, read_source_list
from batch.ray.scorer import ChunkScorer
from cli.allocator import worker_environment
from cli.main import app
from footage.ingest import iter_frames, iter_source_frames
from footage.sampling import SamplingConfig
from footage.scores_csv import read_scores_csv

pytestmark = pytest.mark.slow  # Ray instances and process groups: minutes, not seconds

TESTS_DIR = Path(__file__).resolve().parent
CHUNK = 16  # small chunks, so a 70-frame clip is decoded in five pieces


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("ray_clips")
    frames = road_frames(70, seed=1)
    frames[20:26] = [with_square(f) for f in frames[20:26]]
    images = d / "stills"
    images.mkdir()
    for i, f in enumerate(road_frames(12, seed=3)):
        assert cv2.imwrite(str(images / f"frame{i}.png"), f)
    cut = write_video(d / "cut.avi", road_frames(40, seed=4))
    cut.write_bytes(cut.read_bytes()[: len(cut.read_bytes()) // 2])  # a recording cut off half way
    (d / "broken.mp4").write_text("not a video")
    return {
        "mp4": write_video(d / "drive.mp4", frames),
        "avi": write_video(d / "other.avi", road_frames(45, seed=2)),
        "images": images,
        "cut": cut,
        "broken": d / "broken.mp4",
    }


@pytest.fixture(scope="module")
def model(tiny_trained):  # noqa: ANN001 - a conftest fixture
    return tiny_trained.detector, tiny_trained.path


@pytest.fixture(scope="module")
def ray_local():
    """One local Ray instance for the module (the engine uses it rather than starting its own).
    Workers get the tests folder on their path, for the crashing scorer below."""
    path = os.pathsep.join(p for p in (str(TESTS_DIR), os.environ.get("PYTHONPATH", "")) if p)
    ray.init(
        num_cpus=3, include_dashboard=False, logging_level="WARNING", runtime_env={"env_vars": {"PYTHONPATH": path}}
    )
    yield
    ray.shutdown()


def local_rows(detector, sources: list[str], out: Path, sampling: SamplingConfig) -> dict[str, bytes]:
    """What the local engine writes for each source: its header and rows, as bytes."""
    score_sources(detector, sources, out, sampling=sampling, progress=False, on_error=lambda *_: None)
    header, *rows = out.read_bytes().split(b"\r\n")[:-1]
    return {
        src: b"\r\n".join([header, *(r for r in rows if r.startswith(src.encode() + b","))]) + b"\r\n"
        for src in sources
    }


def config(sources, out: Path, model_path: Path, **kw) -> RayScoreConfig:
    kw = {"chunk_frames": CHUNK, "workers": 2, "device": "cpu", "progress": False, **kw}
    return RayScoreConfig(sources=tuple(str(s) for s in sources), out_dir=out, model_path=model_path, **kw)


# --- without Ray: planning and chunked decoding ---------------------------------------------------


SAMPLINGS = [
    SamplingConfig(),
    SamplingConfig(stride=3),
    SamplingConfig(target_fps=3.0),
    SamplingConfig(stride=2, start_s=1.05, end_s=5.55),
    SamplingConfig(stride=4, max_frames=9),
    SamplingConfig(target_fps=4.0, start_s=0.5, max_frames=11),
]


@pytest.mark.parametrize("sampling", SAMPLINGS, ids=lambda s: repr(s)[15:60])
@pytest.mark.parametrize("kind", ["mp4", "avi"])
def test_chunks_decode_exactly_the_frames_of_sequential_decoding(clips, sampling, kind):
    pre = Preprocessor(TINY.preprocess)
    src = str(clips[kind])
    specs = plan_source(0, src, sampling, CHUNK)
    assert len(specs) > 1 and all(not s.whole for s in specs)
    decoded = [decode_chunk(spec, sampling, pre) for spec in specs]
    assert all(d.error == "" for d in decoded)
    got = [f for d in decoded for f in d.frames]
    want = list(iter_source_frames(src, sampling, transform=pre.prepare))
    assert [f.index for f in got] == [f.index for f in want]
    assert [f.timestamp_s for f in got] == [f.timestamp_s for f in want]
    assert all(np.array_equal(a.image, b.image) for a, b in zip(got, want, strict=True))


def test_plan_cuts_videos_and_keeps_other_sources_whole(clips):
    specs = plan_source(3, str(clips["mp4"]), SamplingConfig(), CHUNK)
    assert [(s.first, s.stop) for s in specs] == [(0, 16), (16, 32), (32, 48), (48, 64), (64, OPEN_END)]
    assert {(s.source_id, s.n_chunks, s.reported) for s in specs} == {(3, 5, 70)}
    # max_frames ends the work early: kept frames 0, 4, ..., 16, so nothing past frame 16 is planned
    assert [
        (s.first, s.stop) for s in plan_source(0, str(clips["mp4"]), SamplingConfig(stride=4, max_frames=5), 16)
    ] == [
        (0, 16),
        (16, OPEN_END),
    ]
    for src, chunk in [(clips["images"], CHUNK), (clips["broken"], CHUNK), (clips["mp4"], 0), (clips["mp4"], 70)]:
        (spec,) = plan_source(0, str(src), SamplingConfig(), chunk)
        assert spec.whole and spec.n_chunks == 1


def test_output_names_are_stems_made_unique_where_they_clash():
    names = output_names(["a/drive.mp4", "b/drive.mp4", "c/other.avi", "d/stills/"])
    assert names["c/other.avi"] == "other.scores.csv" and names["d/stills/"] == "stills.scores.csv"
    assert names["a/drive.mp4"] != names["b/drive.mp4"]
    assert all(
        names[s].startswith("drive-") and names[s].endswith(".scores.csv") for s in ("a/drive.mp4", "b/drive.mp4")
    )


def test_source_lists(tmp_path):
    listing = tmp_path / "list.txt"
    listing.write_text("# today's drives\nclips/a.mp4\n\n  clips/b.mp4  # front camera\n")
    assert read_source_list(listing) == ["clips/a.mp4", "clips/b.mp4"]
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"sources": [{"source": "x.mp4"}, {"source": "y.mp4"}]}))
    assert read_source_list(manifest) == ["x.mp4", "y.mp4"]
    (tmp_path / "empty.txt").write_text("# nothing\n")
    with pytest.raises(ValueError, match="names no sources"):
        read_source_list(tmp_path / "empty.txt")
    with pytest.raises(ValueError, match="cannot read"):
        read_source_list(tmp_path / "missing.txt")


def test_out_must_be_a_folder(tmp_path):
    (tmp_path / "taken").write_text("")
    for bad in (tmp_path / "taken", tmp_path / "scores.csv"):
        with pytest.raises(ValueError, match="is a folder"):
            check_out_dir(bad)
    check_out_dir(tmp_path / "new_folder")


def test_resources_leave_a_cpu_for_decoding(tmp_path):
    cfg = config(["x.mp4"], tmp_path, tmp_path / "m.pt", workers=None, device="auto")
    cpu_only = plan_resources(cfg, {"CPU": 8.0})
    assert (cpu_only.workers, cpu_only.gpus_per_worker, cpu_only.device) == (4, 0.0, "cpu")
    gpus = plan_resources(cfg, {"CPU": 16.0, "GPU": 2.0})
    assert (gpus.workers, gpus.gpus_per_worker, gpus.device) == (2, 1.0, "cuda")
    with pytest.raises(ValueError, match="no CPU"):
        plan_resources(config(["x.mp4"], tmp_path, tmp_path / "m.pt", workers=2), {"CPU": 2.0})
    with pytest.raises(ValueError, match="no GPUs"):
        plan_resources(config(["x.mp4"], tmp_path, tmp_path / "m.pt", device="cuda"), {"CPU": 4.0})


def test_cli_refuses_a_csv_out_and_local_only_options(model, clips, tmp_path):
    runner = CliRunner()
    base = ["score", str(clips["mp4"]), "--model", str(model[1]), "--engine", "ray"]
    result = runner.invoke(app, [*base, "--out", str(tmp_path / "scores.csv")])
    assert result.exit_code == 2 and "--engine ray --out is a folder" in result.output
    result = runner.invoke(app, [*base, "--out", str(tmp_path / "o"), "--events", str(tmp_path / "e.json")])
    assert result.exit_code == 2 and "--engine local only" in result.output
    result = runner.invoke(app, ["score", "--model", str(model[1]), "--out", str(tmp_path / "s.csv")])
    assert result.exit_code == 2 and "no sources" in result.output


# --- on a local Ray instance ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def first_run(ray_local, clips, model, tmp_path_factory):
    """Every kind of source, good and bad, scored once on Ray and once locally."""
    detector, model_path = model
    sources = [str(clips[k]) for k in ("mp4", "broken", "avi", "images", "cut")]
    d = tmp_path_factory.mktemp("ray_run")
    summary = score_on_ray(config(sources, d / "out", model_path), log=lambda _: None)
    expected = local_rows(detector, sources, d / "local.csv", SamplingConfig())
    target = detector.calibrated.target_false_alarm_rate
    return {"summary": summary, "out": d / "out", "sources": sources, "expected": expected, "target": target}


def local_errors(sources: list[str]) -> dict[str, str]:
    errors: dict[str, str] = {}
    for _ in iter_frames(sources, on_error=lambda src, err: errors.setdefault(src, str(err))):
        pass
    return errors


def test_ray_outputs_equal_the_local_engine_and_bad_sources_are_reported(first_run, clips):
    out, sources = first_run["out"], first_run["sources"]
    names = output_names(sources)
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    entries = {e["source"]: e for e in manifest["sources"]}
    assert list(entries) == sources and manifest["complete"]
    errors = local_errors(sources)
    assert set(errors) == {str(clips["broken"]), str(clips["cut"])}
    for src in sources:
        entry = entries[src]
        if src in errors:
            assert entry["status"] == "failed" and entry["error"] == errors[src]
        else:
            assert entry["status"] == "done" and entry["error"] is None
        if src == str(clips["broken"]):
            assert entry["output"] is None and not (out / names[src]).exists()
            continue
        # rows are the local engine's, byte for byte (the cut file: those decoded before the cut)
        assert (out / names[src]).read_bytes() == first_run["expected"][src], src
        n_rows = len(first_run["expected"][src].split(b"\r\n")) - 2
        assert entry["frames"] == n_rows > 0
    assert (
        first_run["summary"].frames
        == sum(e["frames"] for e in entries.values())
        == 70 + 45 + 12 + entries[str(clips["cut"])]["frames"]
    )
    summary = first_run["summary"]
    assert summary.target_false_alarm_rate == first_run["target"]  # the calibrated threshold's, not overridden
    rates = summary.flagged_rates()  # sources of 20 frames or more: the 12 stills are too few to say
    assert rates == {e["source"]: e["anomalies"] / e["frames"] for e in entries.values() if e["frames"] >= 20}
    assert str(clips["images"]) not in rates and str(clips["mp4"]) in rates


def test_rerun_recomputes_only_what_is_missing_or_failed(first_run, model, clips, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(first_run["out"], out)  # copy2 keeps modification times
    sources, names = first_run["sources"], output_names(first_run["sources"])
    avi = str(clips["avi"])
    (out / names[avi]).unlink()
    before = {s: (out / names[s]).stat().st_mtime_ns for s in sources if (out / names[s]).exists()}
    summary = score_on_ray(config(sources, out, model[1]), log=lambda _: None)
    # the deleted output, and the two sources that failed (they may have been repaired) are redone
    assert sorted(summary.computed) == sorted([avi, str(clips["broken"]), str(clips["cut"])])
    assert sorted(summary.reused) == sorted([str(clips["mp4"]), str(clips["images"])])
    for src in summary.reused:
        assert (out / names[src]).stat().st_mtime_ns == before[src]
    assert (out / names[avi]).read_bytes() == first_run["expected"][avi]
    # another threshold changes every row's is_anomaly: nothing is reused
    summary = score_on_ray(config(sources, out, model[1], threshold=-1e9), log=lambda _: None)
    assert summary.reused == [] and len(summary.computed) == len(sources)
    assert int(read_scores_csv(out / names[avi])["is_anomaly"].sum()) == 45


class CrashOnceScorer(ChunkScorer):
    """Kills its own worker process the first time it meets chunk 2, as a lost node would."""

    def __call__(self, row: dict) -> dict:
        marker = Path(str(row["source"])).parent / "crashed-once"
        if int(row["chunk"]) == 2 and not marker.exists():
            marker.touch()
            os._exit(1)
        return super().__call__(row)


def test_a_crashed_workers_chunk_is_retried_not_lost_or_repeated(ray_local, model, tmp_path):
    detector, model_path = model
    clip_dir = tmp_path / "clip"
    clip_dir.mkdir()
    src = str(write_video(clip_dir / "long.mp4", road_frames(80, seed=7)))
    sampling = SamplingConfig(stride=2, start_s=0.3)
    summary = score_on_ray(
        config([src], tmp_path / "out", model_path, sampling=sampling, workers=1),
        log=lambda _: None,
        scorer=CrashOnceScorer,
    )
    assert (clip_dir / "crashed-once").exists()  # the worker did die once
    assert summary.errors == {}
    expected = local_rows(detector, [src], tmp_path / "local.csv", sampling)[src]
    assert (tmp_path / "out" / "long.scores.csv").read_bytes() == expected


class EnvironmentRecordingScorer(ChunkScorer):
    """Writes the malloc settings its worker process started with where RECORD_TO (also from the env) says."""

    def __call__(self, row: dict) -> dict:
        names = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "PYTHONPATH")
        Path(os.environ["RECORD_TO"]).write_text(json.dumps({n: os.environ.get(n) for n in names}))
        return super().__call__(row)


def test_workers_start_with_the_environment_the_command_gives_them(ray_local, model, clips, tmp_path):
    record = tmp_path / "worker-env.json"
    env = {**worker_environment(), "RECORD_TO": str(record)}
    run = config([str(clips["avi"])], tmp_path / "out", model[1], workers=1).model_copy(update={"worker_env": env})
    summary = score_on_ray(run, log=lambda _: None, scorer=EnvironmentRecordingScorer)
    assert summary.errors == {}
    seen = json.loads(record.read_text())
    assert {k: seen[k] for k in worker_environment()} == worker_environment()
    assert str(TESTS_DIR) in seen["PYTHONPATH"]  # merged with the instance's own runtime environment, not replacing it


def test_the_ray_engine_gets_the_commands_malloc_settings_for_its_workers(model, clips, tmp_path, monkeypatch):
    import batch.ray.engine

    given = []

    def capture(cfg: RayScoreConfig, **_: object) -> None:
        given.append(cfg)
        raise KeyboardInterrupt  # stop here: what the engine was given is all this test reads

    monkeypatch.setattr(batch.ray.engine, "score_on_ray", capture)
    CliRunner().invoke(
        app,
        ["score", str(clips["avi"]), "--model", str(model[1]), "--out", str(tmp_path / "o")]
        + ["--engine", "ray", "--workers", "1", "--device", "cpu", "--no-progress"],
    )
    assert given and given[0].worker_env == worker_environment()


def test_cli_ray_engine_with_a_source_list(ray_local, model, clips, tmp_path):
    listing = tmp_path / "sources.txt"
    listing.write_text(f"{clips['avi']}\n{clips['images']}\n")
    result = CliRunner().invoke(
        app,
        ["score", "--manifest", str(listing), "--model", str(model[1]), "--out", str(tmp_path / "o")]
        + ["--engine", "ray", "--workers", "1", "--device", "cpu", "--no-progress"],
    )
    assert result.exit_code == 0, result.output
    assert "scored 57 frames from 2 source(s)" in result.output
    entries = json.loads((tmp_path / "o" / MANIFEST_NAME).read_text())["sources"]
    rates = {e["source"]: e["anomalies"] / e["frames"] for e in entries if e["frames"] >= 20}
    warning = unlike_footage_warning(rates, model[0].calibrated.target_false_alarm_rate, FLEET)
    assert ("warning: frames above the threshold" in result.output) == (warning is not None)
    assert warning is None or warning in result.output
    assert {p.name for p in (tmp_path / "o").iterdir()} == {"other.scores.csv", "stills.scores.csv", MANIFEST_NAME}
