"""`anomaly export` and scoring exported models with ONNX Runtime and OpenVINO (anomaly.export, anomaly.exported)."""

import dataclasses
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from factories import road_frames, video_with_square, with_square
from typer.testing import CliRunner

from anomaly.calibrate import calibrate, fit_camera_profile
from anomaly.checkpoint import save_detector
from anomaly.config import CalibrationConfig
from anomaly.export import ExportError, export_detector
from anomaly.exported import EXPORT_FORMAT, ExportedModelError, load_exported
from anomaly.frame_scores import EXTRA_SCORE_FIELDS, SCORE_FIELDS
from anomaly.runtimes import GRAPH_SUFFIX, RUNTIME_NAMES, RUNTIMES
from anomaly.training.train import TrainingData
from cli.main import app
from footage.scores_csv import read_scores_csv

pytestmark = pytest.mark.slow  # exporting traces the networks and the scoring (about 15 s for the tiny model)
runner = CliRunner()
# What ONNX Runtime may differ by (float32, other kernels): absolute near 0, relative for the large z-scores
# of frames far from normal. The patch distances come from |a|^2 - 2ab + |b|^2 in float32, whose cancellation
# gives up to 3.2e-5 relative on an AMD EPYC with AVX-512 (1e-5 held on the CPU it was first tested on).
ATOL, RTOL = 1e-4, 1e-4
COLUMNS = (*SCORE_FIELDS, *EXTRA_SCORE_FIELDS, "heatmap")


def prepared(detector, source: np.ndarray) -> np.ndarray:
    return np.stack([detector.preprocessor.prepare(f) for f in source])


@pytest.fixture(scope="module")
def with_camera(tiny_trained):
    """The tiny detector with a camera profile 'dash' fitted on other footage, whose score uses the
    product's default signals (with `patch`: the fleet profile's does not), so the export needs a
    graph for each; its fleet profile calibrated again on two drives, so that it has a scene baseline
    (`anomaly.scene_baseline`) to export too."""
    two_drives = [prepared(tiny_trained.detector, road_frames(40, seed=s)) for s in (21, 22)]
    detector = tiny_trained.detector.with_calibration(
        calibrate(tiny_trained.detector, TrainingData.split(two_drives, 0.4))
    )
    assert detector.calibrated.scene is not None
    footage = prepared(tiny_trained.detector, road_frames(40, seed=11))
    cal = detector.config.calibration.model_copy(update={"signals": CalibrationConfig().signals})
    dash = dataclasses.replace(detector, config=detector.config.model_copy(update={"calibration": cal}))
    assert "patch" in cal.signals and "patch" not in detector.calibrated.signals
    return detector.with_profile("dash", fit_camera_profile(dash, [footage]))


@pytest.fixture(scope="module")
def exports(tmp_path_factory, with_camera):
    """The detector exported for a runtime, once per runtime, on first use."""
    made = {}

    def export_for(fmt: str):
        if fmt not in made:
            made[fmt] = tmp_path_factory.mktemp(f"exported-{fmt}") / "model"
            export_detector(with_camera, made[fmt], fmt)
        return made[fmt]

    return export_for


@pytest.fixture(scope="module")
def exported(exports):
    """The ONNX export, for what does not depend on the runtime (refusals, manifest checks)."""
    return exports("onnx")


@pytest.fixture(scope="module")
def frames(tiny_trained):
    source = road_frames(12, seed=3)
    source[4:8] = [with_square(f) for f in source[4:8]]  # some anomalous frames among them
    return prepared(tiny_trained.detector, source)


@pytest.mark.parametrize("fmt", RUNTIMES)
@pytest.mark.parametrize("camera", [None, "dash"])
@pytest.mark.parametrize("all_signals", [False, True])
def test_exported_scores_match_the_torch_path(with_camera, exports, frames, camera, all_signals, fmt):
    torch_side = with_camera.for_camera(camera).with_all_signals(all_signals)
    onnx_side = load_exported(exports(fmt), threads=1).for_camera(camera).with_all_signals(all_signals)
    assert onnx_side.device == f"cpu ({RUNTIME_NAMES[fmt]})"
    assert onnx_side.profile == torch_side.profile == (camera or "fleet")
    want, got = torch_side.score_prepared(frames), onnx_side.score_prepared(frames)
    for name in COLUMNS:
        a, b = getattr(want, name), getattr(got, name)
        assert (a is None) == (b is None), name
        if a is not None:
            np.testing.assert_allclose(b, a, rtol=RTOL, atol=ATOL, err_msg=name)
    # each profile's graph leaves out the costly signals its score does not use
    assert (got.patch_score is None) is (got.defect_local_score is None) is not (all_signals or camera == "dash")
    assert (got.defect_score is None) is not all_signals
    assert (got.disc_score is None) is (got.local_score is None) is not all_signals
    near = np.abs(want.score - want.threshold) < ATOL + RTOL * np.abs(want.score)
    assert (want.is_anomaly == got.is_anomaly)[~near].all() and got.threshold == pytest.approx(want.threshold)
    assert want.is_anomaly.any() and not want.is_anomaly.all()  # the comparison covers both answers


def test_threshold_override_and_unknown_cameras_behave_as_for_torch(with_camera, exported, frames):
    onnx_side = load_exported(exported)
    assert onnx_side.for_camera("elsewhere").profile == "fleet"
    assert onnx_side.profile_note("elsewhere") == with_camera.profile_note("elsewhere")
    assert onnx_side.profile_note("dash") == with_camera.profile_note("dash")
    lowered = onnx_side.with_threshold(-1e9).score_prepared(frames)
    assert lowered.is_anomaly.all() and lowered.threshold == -1e9


def copy_of(exported, tmp_path):
    target = tmp_path / "copy"
    shutil.copytree(exported, target)
    return target


def test_a_folder_without_its_manifest_is_refused(exported, tmp_path):
    folder = copy_of(exported, tmp_path)
    (folder / "detector.json").unlink()
    with pytest.raises(ExportedModelError, match="no detector.json"):
        load_exported(folder)


def test_a_profile_exported_before_the_combination_was_stored_scores_with_the_maximum(
    with_camera, exported, frames, tmp_path
):
    folder = copy_of(exported, tmp_path)
    manifest = json.loads((folder / "detector.json").read_text())
    assert manifest["profiles"]["fleet"]["combination"] == with_camera.calibration.combination == "logmeanexp"
    del manifest["profiles"]["fleet"]["combination"]
    (folder / "detector.json").write_text(json.dumps(manifest))
    torch_side = with_camera.with_calibration(dataclasses.replace(with_camera.calibration, combination="max"))
    want, got = torch_side.score_prepared(frames), load_exported(folder).score_prepared(frames)
    np.testing.assert_allclose(got.score, want.score, rtol=RTOL, atol=ATOL)
    assert not np.allclose(want.score, with_camera.score_prepared(frames).score)  # the rules do differ here


def test_another_format_version_is_refused_naming_both(exported, tmp_path):
    folder = copy_of(exported, tmp_path)
    manifest = json.loads((folder / "detector.json").read_text())
    manifest["format_version"] = 99
    (folder / "detector.json").write_text(json.dumps(manifest))
    refusal = rf"export format version 99.*reads version {EXPORT_FORMAT}; export the model again"
    with pytest.raises(ExportedModelError, match=refusal):
        load_exported(folder)


@pytest.mark.parametrize("fmt", RUNTIMES)
def test_the_folder_holds_a_graph_for_every_signal_and_one_per_profile_need(exports, fmt):
    folder = exports(fmt)
    manifest = json.loads((folder / "detector.json").read_text())
    suffix = GRAPH_SUFFIX[fmt]
    assert {k: g["file"] for k, g in manifest["graphs"].items()} == {
        "all": f"score{suffix}",  # every signal: --all-signals, evaluate
        "defect_local+image+patch": f"score_defect_local+image+patch{suffix}",  # 'dash': no `local`
        "lean": f"score_lean{suffix}",  # the fleet profile: no costly signal
    }
    dash = manifest["graphs"]["defect_local+image+patch"]["outputs"]
    assert not {"local", "disc", "disc_patch"} & set(dash) and {"patch", "image", "defect_local"} <= set(dash)
    stems = ["score", "score_defect_local+image+patch", "score_lean"]
    # OpenVINO IR: each graph is an .xml and its weights' .bin, both checksummed; no ONNX file left behind
    files = [f"{stem}{ext}" for stem in stems for ext in ((".bin", ".xml") if fmt == "openvino" else (".onnx",))]
    assert sorted(p.name for p in folder.iterdir() if p.is_file() and p.name != "detector.json") == sorted(files)
    assert set(files) <= set(manifest["files"])
    assert manifest["format"] == fmt and manifest["runtime"]["name"] == RUNTIME_NAMES[fmt]
    assert manifest["runtime"]["version"]


def test_an_openvino_model_without_openvino_installed_is_refused_saying_how_to_install_it(exports, frames, monkeypatch):
    detector = load_exported(exports("openvino"))  # reading the folder needs no runtime
    monkeypatch.setitem(sys.modules, "openvino", None)  # what `import openvino` meets where it is not installed
    with pytest.raises(ExportedModelError, match=r"OpenVINO is not installed: pip install 'anomaly\[openvino\]'"):
        detector.score_prepared(frames)


def test_a_folder_for_an_unknown_runtime_is_refused(exported, tmp_path):
    folder = copy_of(exported, tmp_path)
    manifest = json.loads((folder / "detector.json").read_text())
    manifest["format"] = "tensorrt"
    (folder / "detector.json").write_text(json.dumps(manifest))
    with pytest.raises(ExportedModelError, match="for the runtime 'tensorrt'; this version runs onnx, openvino"):
        load_exported(folder)


@pytest.mark.parametrize("damage", ["missing", "altered"])
def test_a_missing_or_altered_file_is_refused(exported, tmp_path, damage):
    folder = copy_of(exported, tmp_path)
    graph = folder / "score_lean.onnx"
    if damage == "missing":
        graph.unlink()
    else:
        graph.write_bytes(graph.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(ExportedModelError, match="score_lean.onnx (is missing|does not match its checksum)"):
        load_exported(folder)


def test_export_will_not_replace_a_folder_that_is_not_an_exported_model(with_camera, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ExportError, match="not an exported model"):
        export_detector(with_camera, tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_a_camera_calibrated_after_signals_its_fleet_profile_predates_says_to_recalibrate_the_fleet(
    with_camera, tmp_path
):
    fleet = with_camera.for_camera(None).calibrated
    older = dataclasses.replace(  # the fleet profile of a model calibrated before `pca` and `tear` existed
        fleet,
        stats=dataclasses.replace(
            fleet.stats, thumbnail_mean=None, thumbnail_basis=None, row_center=None, row_spread=None
        ),
    )
    with pytest.raises(ExportError) as refused:
        export_detector(with_camera.with_calibration(older), tmp_path / "out")
    message = str(refused.value)
    assert "'dash' holds statistics the fleet profile was calibrated without" in message
    assert "thumbnail_mean, thumbnail_basis, row_center, row_spread" in message
    assert "`anomaly train --resume`" in message and not (tmp_path / "out").exists()


def test_a_memory_smaller_than_the_neighbour_counts_is_refused(tiny_trained):
    cal = tiny_trained.detector.config.calibration.model_copy(update={"local_neighbours": 500})
    config = tiny_trained.config.model_copy(update={"calibration": cal})
    import dataclasses

    detector = dataclasses.replace(tiny_trained.detector, config=config)
    with pytest.raises(ExportError, match="fewer than the 500 nearest frames"):
        export_detector(detector, tiny_trained.path.parent / "never")


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return video_with_square(tmp_path_factory.mktemp("clip") / "drive.mp4", 30, seed=8, anomalous=slice(10, 16))


@pytest.mark.parametrize("fmt", RUNTIMES)
def test_cli_export_then_score_gives_the_torch_csv(with_camera, tmp_path, clip, fmt):
    model = tmp_path / "model.pt"
    save_detector(with_camera, model)
    result = runner.invoke(app, ["export", str(model), "--out", str(tmp_path / fmt), "--format", fmt])
    assert result.exit_code == 0, result.output
    assert "camera profiles: dash" in result.output and f"as {fmt} to" in result.output
    csvs = {}
    for name, path in (("torch", model), ("exported", tmp_path / fmt)):
        csvs[name] = tmp_path / f"{name}.csv"
        args = ["score", str(clip), "--model", str(path), "--out", str(csvs[name]), "--camera", "dash"]
        result = runner.invoke(app, [*args, "--no-progress", "--all-signals"])
        assert result.exit_code == 0, result.output
        assert "camera 'dash': using its own profile" in result.output
    want, got = read_scores_csv(csvs["torch"]), read_scores_csv(csvs["exported"])
    assert set(want) == set(got) and len(got["score"]) == 30
    for name in (n for n in (*SCORE_FIELDS, *EXTRA_SCORE_FIELDS) if n in want):  # the camera has no scene_level
        np.testing.assert_allclose(got[name], want[name], rtol=RTOL, atol=ATOL, err_msg=name)
    np.testing.assert_array_equal(got["is_anomaly"], want["is_anomaly"])


def test_score_with_an_exported_model_on_cuda_is_refused(exported, tmp_path, clip):
    result = runner.invoke(
        app, ["score", str(clip), "--model", str(exported), "--out", str(tmp_path / "s.csv"), "--device", "cuda"]
    )
    assert result.exit_code == 2 and "runs on the CPU" in result.output


@pytest.mark.parametrize("fmt", RUNTIMES)
def test_scoring_an_exported_model_never_imports_torch(exports, tmp_path, clip, fmt):
    exported = exports(fmt)
    out = tmp_path / "s.csv"
    code = (
        "import sys\n"
        "from cli.main import app\n"
        f"app(['score', {str(clip)!r}, '--model', {str(exported)!r}, '--out', {str(out)!r}, '--no-progress'],"
        " standalone_mode=False)\n"
        "loaded = sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.'))\n"
        "print('torch modules:', len(loaded))\n"
        "assert not loaded, loaded[:5]\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "torch modules: 0" in done.stdout
    assert len(read_scores_csv(out)["score"]) == 30


@pytest.mark.parametrize("fmt", RUNTIMES)
def test_the_service_serves_an_exported_model_with_its_camera_profiles(with_camera, exports, clip, fmt):
    import httpx
    from servers import Model, png, serving, settings_for
    from websockets.sync.client import connect

    source = road_frames(6, seed=21)
    source[3] = with_square(source[3])
    want = {cam: with_camera.for_camera(cam).score_prepared(prepared(with_camera, source)) for cam in (None, "dash")}
    exported = exports(fmt)
    with serving(settings_for(Model(with_camera, exported))) as srv:
        info = httpx.get(f"{srv.url}/v1/model").json()
        single = [httpx.post(f"{srv.url}/v1/score", content=png(f)).json() for f in source]
        with connect(f"{srv.ws_url}/v1/streams/dash/ws") as ws:
            for i, f in enumerate(source):
                ws.send(json.dumps({"frame_index": i, "timestamp_s": i / 10}))
                ws.send(png(f))
            streamed = [json.loads(ws.recv(timeout=30)) for _ in source]
    manifest = (exported / "detector.json").read_bytes()
    import hashlib

    assert info["version"] == hashlib.sha256(manifest).hexdigest()[:12]
    assert info["device"] == f"cpu ({RUNTIME_NAMES[fmt]})"
    assert info["calibration"]["signals"] == list(with_camera.calibrated.signals)
    for cam, answers in ((None, single), ("dash", streamed)):
        got = np.array([a["score"] for a in answers])
        np.testing.assert_allclose(got, want[cam].score, rtol=RTOL, atol=ATOL, err_msg=str(cam))
        assert [a["threshold"] for a in answers] == pytest.approx([want[cam].threshold] * len(source))


def test_commands_that_need_the_checkpoint_say_so_for_an_exported_folder(exported, tmp_path, clip):
    result = runner.invoke(app, ["calibrate", str(exported), str(clip), "--camera", "x", "--out", str(tmp_path / "m")])
    assert result.exit_code == 2 and "is a folder, not a model file" in result.output
