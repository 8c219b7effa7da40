"""Camera drift: has a camera's normal score distribution moved away from its calibration?

A dirty lens, a knocked mount or a new windscreen shifts the scores of most frames of a camera for
hours; an obstacle lifts a few seconds of frames. Both put frames above the camera's calibrated
upper quantile, so what separates them is how much of the recent *time* is up there:

- a `DriftMonitor` counts, over a sliding window of stream time (`window_s`, 5 min), the share of
  time whose frames score above the camera's calibrated p99 (`reference`; a normal camera puts
  about 1% there). Drift starts when the share exceeds `max_exceed_fraction` (20%) and ends when
  it falls below `clear_exceed_fraction` (10%): two levels, so a share near the bound cannot flicker.
- Consecutive video frames are near copies, so counting frames would weigh a 25 fps camera's events
  25 times a 1 fps one's and give a false sense of many independent looks. Frames are pooled into
  bins of `decorrelation_s` (1 s) and each bin weighs the same: the share is a share of time, and
  the window holds `window_s / decorrelation_s` roughly independent looks (300), not 7500 frames.
  Under stationarity the share has mean ~0.01 and spread ~sqrt(0.01 / 300) ~ 0.006 (more on real
  drives, where a new drive sees a few % above p99): the bound is far above the noise.
- An ordinary event is short: to raise drift, a stretch above the reference has to fill more than
  `max_exceed_fraction * window_s` (60 s) of the window, or `max_exceed_fraction * min_window_s`
  (12 s) before `min_window_s` of frames were seen (until then missing time counts as normal, so an
  event at the start of the footage cannot raise drift on a thin window). A sustained shift that
  puts a share `f` of the time above the reference raises it within `time_to_alarm_s(config, f)`
  = `window_s * max_exceed_fraction / f + decorrelation_s` (61 s when every frame moved up, 121 s
  when half did), whenever it starts.

No test is run on the scores' values beyond the one quantile: a share of time above a calibrated
level needs no assumption about the shape of the score distribution, which differs between signals
and cameras, and it stays bounded (0..1) whatever a broken camera scores.

Numpy and pydantic only (no torch): the service, the batch scorer and the exported scorer share it.
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from anomaly.frame_scores import FrameScorer, ProfileView
from anomaly.profiles import FLEET

# share of a calibration's normal frames above each quantile the monitor may use as its reference
NOMINAL_RATE = {"p90": 0.10, "p99": 0.01}
MIN_BINS = 10  # fewest bins `min_window_s` may hold: a verdict on fewer independent looks is a guess
MAX_BINS = 1_000_000  # most bins one window may hold (memory: one camera's window is two numbers a bin)


class DriftConfig(BaseModel):
    """When a camera's score distribution counts as drifted (see the module docstring for the rule)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    window_s: float = Field(
        300.0, gt=0.0, le=7 * 86400.0, description="sliding window of stream time the drift share is measured on (s)"
    )
    min_window_s: float = Field(
        60.0,
        gt=0.0,
        description="the share is taken over at least this much time with frames: before that, missing time counts "
        "as normal (no drift from a short event on a thin window), and a drift does not end on less (s)",
    )
    decorrelation_s: float = Field(
        1.0,
        gt=0.0,
        description="time over which video frames are near copies: frames are pooled into bins this long, each bin "
        "weighing the same, so the share is a share of time whatever the frame rate (s)",
    )
    reference: Literal["p90", "p99"] = Field(
        "p99",
        description="the camera's calibrated score quantile whose exceedances are counted (p99: 1% of normal time "
        "above it; p90: 10%, more sensitive to small shifts, needs higher bounds)",
    )
    max_exceed_fraction: float = Field(
        0.2, gt=0.0, lt=1.0, description="drift starts when the share of the window above the reference exceeds this"
    )
    clear_exceed_fraction: float = Field(
        0.1, gt=0.0, lt=1.0, description="a drift ends when the share falls below this (hysteresis)"
    )

    @model_validator(mode="after")
    def _consistent(self) -> DriftConfig:
        if self.min_window_s > self.window_s:
            raise ValueError(f"min_window_s ({self.min_window_s:g}) must not exceed window_s ({self.window_s:g})")
        if self.min_window_s / self.decorrelation_s < MIN_BINS:
            raise ValueError(
                f"min_window_s ({self.min_window_s:g}) must hold at least {MIN_BINS} decorrelation times "
                f"({self.decorrelation_s:g} s each)"
            )
        if self.window_s / self.decorrelation_s > MAX_BINS:
            raise ValueError(f"window_s / decorrelation_s must be at most {MAX_BINS} bins")
        if self.clear_exceed_fraction >= self.max_exceed_fraction:
            raise ValueError("clear_exceed_fraction must be below max_exceed_fraction (hysteresis)")
        if self.clear_exceed_fraction <= NOMINAL_RATE[self.reference]:
            raise ValueError(
                f"clear_exceed_fraction must be above {NOMINAL_RATE[self.reference]:g}, the share of normal time "
                f"above {self.reference}: a drift could never end"
            )
        return self

    @property
    def window_bins(self) -> int:
        return max(1, round(self.window_s / self.decorrelation_s))

    @property
    def min_bins(self) -> int:
        return max(1, math.ceil(self.min_window_s / self.decorrelation_s - 1e-9))


def time_to_alarm_s(config: DriftConfig, exceed_fraction_after_shift: float) -> float:
    """Longest time from a step change to the drift alarm, when after it a share `f` of the time scores
    above the reference (inf when `f` does not exceed the bound).

    `window_s * max_exceed_fraction / f + decorrelation_s`: the worst case is a full window of time
    with nothing above the reference before the step, which must be replaced until the share passes
    the bound; a younger window or some time above the reference before only shortens it. The
    extra bin is the step falling mid-bin. Stream time with frames at least every `decorrelation_s`;
    `f` is the share the shifted camera actually produces (its noise included).
    """
    f = float(exceed_fraction_after_shift)
    if f <= config.max_exceed_fraction:
        return math.inf
    return config.window_s * config.max_exceed_fraction / f + config.decorrelation_s


def time_to_clear_s(config: DriftConfig, exceed_fraction_after_recovery: float = 0.0) -> float:
    """Longest time from the end of a shift to the end of its alarm, when after it a share `f` of the time
    scores above the reference (inf when `f` is not below the clearing level).

    `window_s * (1 - clear) / (1 - f) + decorrelation_s`: the worst case is a window entirely above the
    reference, slid out until the share falls below `clear_exceed_fraction`.
    """
    f = float(exceed_fraction_after_recovery)
    clear = config.clear_exceed_fraction
    if f >= clear:
        return math.inf
    return config.window_s * (1.0 - clear) / (1.0 - f) + config.decorrelation_s


def bin_index(t: float, width: float) -> int:
    """The bin of time `t`: floor(t / width), except that a time on a bin edge up to rounding (0.3 / 0.1 is
    2.9999999999999996) starts its bin, so frames tagged i / fps fill one bin each at fps = 1 / width."""
    q = t / width
    nearest = round(q)
    return nearest if abs(q - nearest) <= 1e-9 * max(1.0, abs(q)) else math.floor(q)


@dataclass(frozen=True)
class DriftReference:
    """The level a camera's frames are compared with, from its calibration profile."""

    name: str  # "p99", "p90", or "threshold" for a profile calibrated before quantiles were stored
    score: float
    nominal_rate: float  # share of the calibration's normal frames above it


def drift_reference(
    quantiles: Mapping[str, float], threshold: float, target_false_alarm_rate: float, config: DriftConfig
) -> DriftReference:
    """The profile's `config.reference` quantile, or its threshold (at its target rate) when it stored none."""
    level = quantiles.get(config.reference)
    if level is not None and math.isfinite(float(level)):
        return DriftReference(config.reference, float(level), NOMINAL_RATE[config.reference])
    return DriftReference("threshold", float(threshold), float(target_false_alarm_rate))


def profile_reference(profile: ProfileView, config: DriftConfig) -> DriftReference:
    """`drift_reference` of a calibration profile (a torch `Calibration` or an exported one)."""
    quantiles = profile.summary().get("score_quantiles") or {}
    return drift_reference(quantiles, profile.threshold, profile.target_false_alarm_rate, config)


@dataclass(frozen=True)
class DriftEvent:
    """A stretch during which a camera's scores were drifted. `end_s` None: still drifting (or forgotten)."""

    camera: str
    start_s: float  # timestamp of the frame that raised the alarm
    end_s: float | None  # timestamp of the frame that ended it
    peak_exceed_fraction: float
    reference: str  # which calibrated level was exceeded ("p99", ...)
    reference_score: float
    max_exceed_fraction: float  # the bound it was raised at
    window_s: float

    def to_dict(self) -> dict[str, Any]:
        return {"type": "camera_drift", **asdict(self)}


@dataclass(frozen=True)
class DriftUpdate:
    """What one frame did to its camera's drift state."""

    camera: str
    exceed_fraction: float  # share of the window's time above the reference, after this frame
    drifting: bool
    started: bool = False
    ended: bool = False
    event: DriftEvent | None = None  # the event this frame started (open) or ended (finished)


@dataclass(frozen=True)
class DriftState:
    """A camera's current drift reading (for gauges)."""

    camera: str
    exceed_fraction: float
    drifting: bool


class DriftMonitor:
    """The drift state of one camera, fed (timestamp, score) in time order.

    Timestamps that go back (a new stream of the same camera starting at 0) continue the monitor's
    clock from its last frame, so the window carries over; events report the frames' own timestamps.
    """

    def __init__(self, camera: str, reference: DriftReference, config: DriftConfig | None = None) -> None:
        self.camera = camera
        self.reference = reference
        self.config = config or DriftConfig()
        if reference.nominal_rate >= self.config.clear_exceed_fraction:
            raise ValueError(
                f"camera {camera!r}: its reference {reference.name} has {reference.nominal_rate:g} of normal time "
                f"above it, not below clear_exceed_fraction ({self.config.clear_exceed_fraction:g})"
            )
        self._bins: deque[tuple[int, float]] = deque()  # finished bins in the window: (index, share above)
        self._sum = 0.0  # sum of the finished bins' shares
        self._finished_since_sum = 0
        self._bin: int | None = None  # the bin being filled
        self._bin_frames = 0
        self._bin_above = 0
        self._last_t = -math.inf
        self._offset = 0.0
        self.exceed_fraction = 0.0
        self._start_s: float | None = None  # of the open drift
        self._peak = 0.0

    @property
    def drifting(self) -> bool:
        return self._start_s is not None

    @property
    def observed_bins(self) -> int:
        """Bins of the window that hold frames (the one being filled included)."""
        return len(self._bins) + (1 if self._bin_frames else 0)

    def update(self, timestamp_s: float, score: float) -> DriftUpdate:
        """Count one frame and return the camera's drift state after it (a NaN score counts as not above)."""
        if not math.isfinite(timestamp_s):
            raise ValueError(f"camera {self.camera!r}: frame timestamp {timestamp_s} is not finite")
        self._add(self._clock(float(timestamp_s)), float(score) > self.reference.score)
        self.exceed_fraction = self._share()
        return self._transition(float(timestamp_s))

    def state(self) -> DriftState:
        return DriftState(self.camera, self.exceed_fraction, self.drifting)

    def open_event(self) -> DriftEvent | None:
        """The drift in progress (end_s None), or None."""
        return None if self._start_s is None else self._event(self._start_s, None)

    def _clock(self, timestamp_s: float) -> float:
        """The monitor's time: the frame's, shifted on so that it never goes back."""
        t = timestamp_s + self._offset
        if t < self._last_t:
            self._offset += self._last_t - t
            t = self._last_t
        self._last_t = t
        return t

    def _add(self, t: float, above: bool) -> None:
        index = bin_index(t, self.config.decorrelation_s)
        if index != self._bin:
            self._close_bin()
            self._bin = index
            self._evict(index)
        self._bin_frames += 1
        self._bin_above += above

    def _close_bin(self) -> None:
        if self._bin is None or not self._bin_frames:
            return
        share = self._bin_above / self._bin_frames
        self._bins.append((self._bin, share))
        self._sum += share
        self._bin_frames = self._bin_above = 0
        self._finished_since_sum += 1
        if self._finished_since_sum >= self.config.window_bins:  # keep the running sum exact
            self._sum = math.fsum(s for _, s in self._bins)
            self._finished_since_sum = 0

    def _evict(self, index: int) -> None:
        oldest = index - self.config.window_bins  # bins at or before it have left the window
        while self._bins and self._bins[0][0] <= oldest:
            self._sum -= self._bins.popleft()[1]
        if not self._bins:
            self._sum = 0.0

    def _share(self) -> float:
        current = self._bin_above / self._bin_frames if self._bin_frames else 0.0
        return min(1.0, max(0.0, (self._sum + current) / max(self.observed_bins, self.config.min_bins)))

    def _transition(self, timestamp_s: float) -> DriftUpdate:
        cfg, share = self.config, self.exceed_fraction
        if self._start_s is None:
            if share > cfg.max_exceed_fraction:
                self._start_s, self._peak = timestamp_s, share
                return DriftUpdate(self.camera, share, True, started=True, event=self._event(timestamp_s, None))
            return DriftUpdate(self.camera, share, False)
        self._peak = max(self._peak, share)
        if share < cfg.clear_exceed_fraction and self.observed_bins >= cfg.min_bins:
            event = self._event(self._start_s, timestamp_s)
            self._start_s, self._peak = None, 0.0
            return DriftUpdate(self.camera, share, False, ended=True, event=event)
        return DriftUpdate(self.camera, share, True)

    def _event(self, start_s: float, end_s: float | None) -> DriftEvent:
        return DriftEvent(
            camera=self.camera,
            start_s=start_s,
            end_s=end_s,
            peak_exceed_fraction=self._peak,
            reference=self.reference.name,
            reference_score=self.reference.score,
            max_exceed_fraction=self.config.max_exceed_fraction,
            window_s=self.config.window_s,
        )


class DriftTracker:
    """A `DriftMonitor` per camera (None = the fleet, named "fleet"), each built on first use from the
    reference `reference_of(camera)` gives.

    `max_cameras` bounds the monitors held (a service's clients choose camera names): beyond it the
    camera updated longest ago is forgotten. `keep_events` bounds the finished events kept (None: all).
    """

    def __init__(
        self,
        config: DriftConfig,
        reference_of: Callable[[str | None], DriftReference],
        *,
        max_cameras: int | None = None,
        keep_events: int | None = None,
    ) -> None:
        self.config = config
        self.reference_of = reference_of
        self.max_cameras = max_cameras
        self._monitors: OrderedDict[str, DriftMonitor] = OrderedDict()
        self._finished: deque[DriftEvent] = deque(maxlen=keep_events)

    @classmethod
    def for_scorer(cls, config: DriftConfig, scorer: FrameScorer, **kwargs: Any) -> DriftTracker:
        """Monitors whose reference is each camera's profile in `scorer` (the fleet's for a camera without one)."""
        return cls(config, lambda camera: profile_reference(scorer.for_camera(camera).calibrated, config), **kwargs)

    def __len__(self) -> int:
        return len(self._monitors)

    def __iter__(self) -> Iterator[DriftMonitor]:
        return iter(list(self._monitors.values()))

    def monitor(self, camera: str | None) -> DriftMonitor:
        """`camera`'s monitor, built (and the oldest one forgotten, past `max_cameras`) if it has none."""
        name = camera or FLEET
        found = self._monitors.get(name)
        if found is not None:
            self._monitors.move_to_end(name)
            return found
        if self.max_cameras is not None:
            while len(self._monitors) >= self.max_cameras:
                self._forget(next(iter(self._monitors)))
        made = self._monitors[name] = DriftMonitor(name, self.reference_of(camera), self.config)
        return made

    def update(self, camera: str | None, timestamp_s: float, score: float) -> DriftUpdate:
        """One scored frame of `camera`, in its time order."""
        upd = self.monitor(camera).update(timestamp_s, score)
        if upd.ended and upd.event is not None:
            self._finished.append(upd.event)
        return upd

    def states(self) -> list[DriftState]:
        """Every camera's current reading."""
        return [m.state() for m in list(self._monitors.values())]

    def events(self) -> list[DriftEvent]:
        """Finished drifts, then those still open (end_s None), each group in start order."""
        open_events = [e for m in self._monitors.values() if (e := m.open_event()) is not None]
        return list(self._finished) + sorted(open_events, key=lambda e: e.start_s)

    def _forget(self, camera: str) -> None:
        gone = self._monitors.pop(camera)
        if (event := gone.open_event()) is not None:
            self._finished.append(event)  # kept, still without an end: its camera stopped being watched
