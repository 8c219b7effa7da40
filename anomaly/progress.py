"""Progress bars that behave in a terminal and in a log file.

In a terminal, tqdm redraws one line in place. Piped into a log, those redraws become hundreds of
carriage-return updates on one enormous line; there the bar prints a plain line every few seconds.
"""

from __future__ import annotations

import sys
from typing import IO, Any

from tqdm import tqdm

LOG_INTERVAL_S = 5.0


class _LineWriter:
    """A file for tqdm that turns each in-place redraw into one whole line."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream

    def write(self, text: str) -> None:
        line = text.replace("\r", "").rstrip()
        if line:
            self.stream.write(line + "\n")

    def flush(self) -> None:
        self.stream.flush()


def progress_bar(*, enabled: bool = True, stream: IO[str] | None = None, **kwargs: Any) -> tqdm:
    """A tqdm bar on stderr: redrawn in place on a terminal, a line every few seconds otherwise."""
    stream = stream or sys.stderr
    if enabled and not (hasattr(stream, "isatty") and stream.isatty()):
        kwargs = {"mininterval": LOG_INTERVAL_S, "maxinterval": LOG_INTERVAL_S, "ascii": True, **kwargs}
        return tqdm(file=_LineWriter(stream), dynamic_ncols=False, ncols=100, **kwargs)
    return tqdm(file=stream, disable=not enabled, **kwargs)
