"""Refusing a bad model file: one line that names the file and the reason, and never the unsafe way out.

torch's own message for a refused pickle runs to many lines and suggests retrying with
`weights_only=False`, which would run the code the file carries. Issue 13, item 7.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path

import pytest
import torch

from anomaly.checkpoint import FORMAT_VERSION, KIND_MODEL, CheckpointError, load_detector

CPU = torch.device("cpu")


class Payload:
    """Unpickling this would create a directory."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204
        return (os.mkdir, (str(self.marker),))


def _write(path: Path, how: str, marker: Path) -> None:
    if how == "raw pickle":
        path.write_bytes(pickle.dumps(Payload(marker), protocol=2))
    elif how == "torch.save payload":
        torch.save(Payload(marker), path)
    elif how == "payload inside a checkpoint":
        torch.save({"kind": KIND_MODEL, "format_version": FORMAT_VERSION, "config": Payload(marker)}, path)
    elif how == "text":
        path.write_text("this is not a model\nsecond line\n")
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "random bytes":
        path.write_bytes(bytes(range(256)) * 40)
    elif how == "empty zip":
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr("x/data.pkl", b"\x80\x02}q\x00.")  # a zip torch cannot read as a checkpoint
    elif how == "truncated checkpoint":
        torch.save({"kind": KIND_MODEL, "w": torch.zeros(1000)}, path)
        path.write_bytes(path.read_bytes()[:600])
    else:  # pragma: no cover
        raise AssertionError(how)


KINDS = [
    "raw pickle",
    "torch.save payload",
    "payload inside a checkpoint",
    "text",
    "empty",
    "random bytes",
    "empty zip",
    "truncated checkpoint",
]


@pytest.mark.parametrize("how", KINDS)
def test_refusal_is_one_line_naming_the_file_and_never_suggests_weights_only_false(tmp_path: Path, how: str) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "model.pt"
    _write(path, how, marker)
    with pytest.raises(CheckpointError) as refused:
        load_detector(path, CPU)
    message = str(refused.value)
    assert "\n" not in message, message
    assert str(path) in message
    assert "weights_only" not in message
    assert "not a readable anomaly checkpoint: " in message
    assert len(message.split("checkpoint: ", 1)[1]) > 5  # a reason follows
    assert refused.value.__cause__ is None or "\n" not in str(refused.value.__cause__)
    assert not marker.exists(), "unpickling ran code"


def test_code_carrying_file_says_it_would_run_code(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    _write(path, "raw pickle", tmp_path / "pwned")
    with pytest.raises(CheckpointError, match=r"would run code when loaded, refused \(.*mkdir"):
        load_detector(path, CPU)


@pytest.mark.parametrize("command", ["serve", "score"])
def test_the_cli_refuses_a_malicious_model_in_one_line(tmp_path: Path, command: str) -> None:
    from typer.testing import CliRunner

    from cli.main import app

    marker = tmp_path / "pwned"
    path = tmp_path / "model.pt"
    _write(path, "torch.save payload", marker)
    args = ["serve", "--model", str(path), "--device", "cpu"]
    if command == "score":
        (tmp_path / "frames").mkdir()
        args = ["score", str(tmp_path / "frames"), "--model", str(path), "--out", str(tmp_path / "s.csv")]
    result = CliRunner().invoke(app, [*args, "--device", "cpu"] if command == "score" else args)
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    refusal = [ln for ln in lines if str(path) in ln]
    assert len(refusal) == 1 and "would run code" in refusal[0], result.output
    assert "weights_only" not in result.output
    assert not marker.exists()
