"""The scoring actor: loads the model once and scores decoded chunks with `anomaly.scoring.score_prepared`."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch

from anomaly.checkpoint import load_detector
from anomaly.scoring import score_prepared
from footage.ingest import (
    Frame,
)
from footage.scores_csv import ScoredBatch, csv_rows, csv_text


class ChunkScorer:
    """A scoring actor: loads the model once, then scores chunk after chunk with the scoring core."""

    def __init__(
        self,
        model_bytes: bytes,
        device: str,
        threshold: float | None,
        batch_size: int,
        torch_threads: int,
        all_signals: bool = False,
    ) -> None:
        torch.set_num_threads(max(1, torch_threads))
        # the checkpoint travels with the actor, so workers need not see the driver's files
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "model.pt"
            path.write_bytes(model_bytes)
            detector = load_detector(path, torch.device(device))
        detector = detector.with_all_signals(all_signals)
        self.detector = detector if threshold is None else detector.with_threshold(threshold)
        self.batch_size = batch_size

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        images, indices, timestamps = row["images"], row["indices"], row["timestamps"]
        source = str(row["source"])
        parts, anomalies = [], 0
        for i in range(0, len(images), self.batch_size):
            sl = slice(i, i + self.batch_size)
            frames = [
                Frame(image=img, source=source, index=int(idx), timestamp_s=float(ts))
                for img, idx, ts in zip(images[sl], indices[sl], timestamps[sl], strict=True)
            ]
            # Ray hands out read-only views of its object store; torch wants arrays it may write to
            scored = ScoredBatch(frames, score_prepared(self.detector, images[sl].copy()))
            parts.append(csv_text(csv_rows(scored)))
            anomalies += int(scored.scores.is_anomaly.sum())
        return {
            "source_id": int(row["source_id"]),
            "chunk": int(row["chunk"]),
            "n_chunks": int(row["n_chunks"]),
            "csv": "".join(parts),
            "frames": len(images),
            "anomalies": anomalies,
            "eof": int(row["eof"]),
            "reported": int(row["reported"]),
            "error": str(row["error"]),
        }
