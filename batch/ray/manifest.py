"""The run's files: the source list, one scores CSV per source, and manifest.json, which makes a run restartable.

A source whose output exists and whose manifest entry says it was done with the same model and
settings is skipped on a rerun; its file is written only once all of its chunks are back.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from anomaly.profiles import rates_by_source
from batch.ray.chunks import ChunkResult, assemble
from batch.ray.config import RayScoreConfig
from footage.scores_csv import CSV_COLUMNS, atomic_write_text, csv_text

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = 1
SCORES_SUFFIX = ".scores.csv"


@dataclass
class SourceOutcome:
    source: str
    output: str | None
    status: Literal["done", "failed", "pending"]
    frames: int = 0
    anomalies: int = 0
    error: str | None = None
    reused: bool = False  # complete from an earlier run, not recomputed


@dataclass
class RayScoreSummary:
    outcomes: list[SourceOutcome]
    threshold: float
    manifest: Path
    target_false_alarm_rate: float | None = None  # of the calibrated threshold; None when it was overridden

    @property
    def computed(self) -> list[str]:
        return [o.source for o in self.outcomes if not o.reused and o.status != "pending"]

    @property
    def reused(self) -> list[str]:
        return [o.source for o in self.outcomes if o.reused]

    @property
    def errors(self) -> dict[str, str]:
        return {o.source: o.error or "" for o in self.outcomes if o.status == "failed"}

    @property
    def frames(self) -> int:
        return sum(o.frames for o in self.outcomes)

    @property
    def anomalies(self) -> int:
        return sum(o.anomalies for o in self.outcomes)

    def flagged_rates(self) -> dict[str, float]:
        """Per source of enough frames (`anomaly.profiles.rates_by_source`), the share of them flagged."""
        frames = {o.source: o.frames for o in self.outcomes}
        return rates_by_source(frames, {o.source: o.anomalies for o in self.outcomes})


def read_source_list(path: Path) -> list[str]:
    """Sources listed in a file: one path per line (blank lines and `#` comments ignored), or the
    `manifest.json` of an earlier `--engine ray` run (its sources, in order)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ValueError(f"source list {path}: cannot read it ({exc.strerror or exc})") from exc
    if path.suffix == ".json":
        try:
            data = json.loads(text)
            entries = data["sources"] if isinstance(data, dict) else data
            sources = [e["source"] if isinstance(e, dict) else e for e in entries]
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"source list {path}: expected a manifest.json or a JSON list of paths ({exc})") from exc
        if not all(isinstance(s, str) for s in sources):
            raise ValueError(f"source list {path}: every source must be a string")
    else:
        sources = [s for s in (line.split("#", 1)[0].strip() for line in text.splitlines()) if s]
    if not sources:
        raise ValueError(f"source list {path} names no sources")
    return sources


def output_names(sources: Sequence[str]) -> dict[str, str]:
    """`<stem>.scores.csv` per source; stems shared by several sources get a short hash of the path."""
    stems = [Path(s.rstrip("/\\")).stem or "source" for s in sources]
    counts: dict[str, int] = {}
    for stem in stems:
        counts[stem] = counts.get(stem, 0) + 1
    return {
        src: f"{stem}-{hashlib.sha1(src.encode()).hexdigest()[:8]}{SCORES_SUFFIX}"
        if counts[stem] > 1
        else f"{stem}{SCORES_SUFFIX}"
        for src, stem in zip(sources, stems, strict=True)
    }


def check_out_dir(out_dir: Path) -> None:
    """`--out` of a Ray run is a folder; catch the local engine's habit of naming a CSV file."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(
            f"--out {out_dir} is a file; with --engine ray --out is a folder that receives one "
            f"<source-stem>{SCORES_SUFFIX} per source and {MANIFEST_NAME}"
        )
    if out_dir.suffix.lower() in (".csv", ".json", ".txt"):
        raise ValueError(
            f"--out {out_dir} looks like a file name; with --engine ray --out is a folder that receives one "
            f"<source-stem>{SCORES_SUFFIX} per source and {MANIFEST_NAME}"
        )


def run_key(model_sha256: str, config: RayScoreConfig) -> str:
    """What the rows depend on: model, threshold, sampling, columns. Not chunking, batching or workers."""
    payload = {
        "model": model_sha256,
        "threshold": config.threshold,
        "sampling": config.sampling.model_dump(),
        "columns": list(CSV_COLUMNS),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def read_manifest(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("format_version") == MANIFEST_FORMAT else None


def previously_done(manifest: dict[str, Any] | None, key: str, out_dir: Path, names: dict[str, str]) -> dict:
    """Sources an earlier run with the same key finished, whose output is still there."""
    if not manifest or manifest.get("run_key") != key:
        return {}
    done = {}
    for entry in manifest.get("sources", []):
        src = entry.get("source")
        complete = entry.get("status") == "done" and src in names and entry.get("output") == names[src]
        if complete and (Path(out_dir) / names[src]).is_file():
            done[src] = entry
    return done


class RunWriter:
    """Writes each finished source and keeps `manifest.json` current (atomically, at most every
    `min_interval_s` while running), so an interrupted run leaves a truthful record behind."""

    def __init__(self, config: RayScoreConfig, outcomes: dict[str, SourceOutcome], header: dict[str, Any]) -> None:
        self.config = config
        self.outcomes = outcomes
        self.header = header
        self.path = Path(config.out_dir) / MANIFEST_NAME
        self.min_interval_s = 1.0
        self._last_write = 0.0

    def finish_source(self, source: str, parts: Sequence[ChunkResult]) -> SourceOutcome:
        rows, frames, anomalies, error = assemble(source, parts)
        outcome = self.outcomes[source]
        if rows or not error:  # a failed source with no rows leaves no file
            atomic_write_text(Path(self.config.out_dir) / str(outcome.output), csv_text([CSV_COLUMNS]) + rows)
        else:
            outcome.output = None
        outcome.frames, outcome.anomalies, outcome.error = frames, anomalies, error
        outcome.status = "failed" if error else "done"
        self.write_manifest()
        return outcome

    def write_manifest(self, final: bool = False) -> None:
        now = time.monotonic()
        if not final and now - self._last_write < self.min_interval_s:
            return
        self._last_write = now
        outcomes = list(self.outcomes.values())
        payload = {
            **self.header,
            "updated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "complete": all(o.status != "pending" for o in outcomes),
            "totals": {
                "sources": len(outcomes),
                "done": sum(o.status == "done" for o in outcomes),
                "failed": sum(o.status == "failed" for o in outcomes),
                "pending": sum(o.status == "pending" for o in outcomes),
                "frames": sum(o.frames for o in outcomes),
                "anomalies": sum(o.anomalies for o in outcomes),
            },
            "sources": [{k: v for k, v in asdict(o).items() if k != "reused"} for o in outcomes],
        }
        atomic_write_text(self.path, json.dumps(payload, indent=2) + "\n")
