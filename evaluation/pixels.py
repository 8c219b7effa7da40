"""Frames read back from their sources by row, for the report's strip of frames and for the baselines."""

from __future__ import annotations

import numpy as np

from anomaly.preprocess import Preprocessor
from evaluation.inputs import LabeledScores
from footage.ingest import IngestError, iter_source_frames
from footage.sampling import SamplingConfig


def read_pixels(
    scored: LabeledScores, wanted_bgr: set[int], preprocessor: Preprocessor | None
) -> tuple[dict[int, np.ndarray], np.ndarray | None, list[str]]:
    """Decode the scored frames again: full frames for `wanted_bgr` rows, prepared frames for every row
    (when `preprocessor` is given). Returns those and the clips that could not be read."""
    cols = scored.cols
    bgr: dict[int, np.ndarray] = {}
    prepared: np.ndarray | None = None
    missing: list[str] = []
    for src in scored.sources:
        rows = scored.rows_of(src)
        want_rows = {int(cols["frame_index"][r]): int(r) for r in rows}
        keep_bgr = {int(cols["frame_index"][r]) for r in rows if int(r) in wanted_bgr}
        if preprocessor is None and not keep_bgr:
            continue
        found: dict[int, np.ndarray] = {}
        try:
            last = max(want_rows) if preprocessor is not None else max(keep_bgr)
            for frame in iter_source_frames(src, SamplingConfig(max_frames=last + 1)):
                row = want_rows.get(frame.index)
                if row is None:
                    continue
                if frame.index in keep_bgr:
                    bgr[row] = frame.image
                if preprocessor is not None:
                    found[row] = preprocessor.prepare(frame.image)
        except IngestError as err:
            missing.append(f"{src} ({err})")
            continue
        if preprocessor is not None:
            if len(found) < len(rows):
                missing.append(f"{src} (only {len(found)} of its {len(rows)} scored frames could be decoded)")
                continue
            if prepared is None:
                h, w = preprocessor.size
                prepared = np.zeros((len(cols["score"]), h, w, 3), np.uint8)
            for row, img in found.items():
                prepared[row] = img
    return bgr, (prepared if not missing else None), missing
