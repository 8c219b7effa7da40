"""Load test of the streaming service: N cameras streaming real JPEG frames at a fixed rate over loopback.

    python benchmarks/load_test.py --model runs/serve/model.pt [--streams 4] [--fps 25] [--duration 30]
        [--transport ws|http] [--url http://host:port --token TOKEN] [-- extra `anomaly serve` options]

Without --url it starts `anomaly serve` on a free port (CPU), waits for /readyz, runs the load,
prints the figures and stops the server with SIGTERM. Frames come from the labeled sample clips
(640x360), one clip per stream, re-encoded as JPEG before the clock starts, and are sent on a
fixed schedule (open loop: a slow answer does not delay the next send, as with a real camera).
Latency is from just before a frame is sent to its result arriving. The first --warmup seconds
are sent but left out of the figures. The client runs on the same machine, so it competes with
the server for the CPU; the figures include that.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import httpx
import numpy as np
import psutil
import websockets

ROOT = Path(__file__).resolve().parents[1]
CLIPS = sorted((ROOT / "sample_videos").glob("test_*.mp4"))


@dataclass
class StreamStats:
    sent: dict[int, float] = field(default_factory=dict)  # frame index -> send time
    latency: dict[int, float] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    slow_downs: int = 0
    drift_messages: int = 0  # `camera_drift` messages (the load's frames can move a camera's score)


def encoded_frames(clip: Path, n: int, quality: int) -> list[bytes]:
    """Up to `n` frames of `clip` as JPEG (the clip is looped when it is shorter)."""
    cap = cv2.VideoCapture(str(clip))
    out: list[bytes] = []
    while len(out) < n:
        ok, frame = cap.read()
        if not ok:
            break
        out.append(cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, quality])[1].tobytes())
    cap.release()
    if not out:
        raise SystemExit(f"cannot read frames from {clip}")
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: Path, port: int, token: str | None, extra: list[str]) -> subprocess.Popen:
    env = {**os.environ}
    if token:
        env["ANOMALY_API_TOKEN"] = token
    cmd = [sys.executable, "-m", "anomaly", "serve", "--model", str(model), "--port", str(port), "--device", "cpu"]
    cmd += ["--no-access-log", "--log-level", "warning", *extra]
    return subprocess.Popen(cmd, env=env)


def wait_ready(url: str, proc: subprocess.Popen | None, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"the server exited with status {proc.returncode}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"{url} did not become ready")


async def sleep_until(t: float) -> None:
    delay = t - time.perf_counter()
    if delay > 0:
        await asyncio.sleep(delay)


async def ws_stream(
    url: str, headers: dict, sid: str, frames: list[bytes], n: int, fps: float, t0: float
) -> StreamStats:
    stats = StreamStats()
    ws_url = url.replace("http://", "ws://") + f"/v1/streams/{sid}/ws?fps={fps}"
    async with websockets.connect(ws_url, additional_headers=headers, max_size=None) as ws:

        async def send() -> None:
            for k in range(n):
                await sleep_until(t0 + k / fps)
                stats.sent[k] = time.perf_counter()
                await ws.send(frames[k % len(frames)])

        async def receive() -> None:
            answered = 0
            while answered < n:
                msg = json.loads(await ws.recv())
                now = time.perf_counter()
                if msg["type"] == "slow_down":
                    stats.slow_downs += 1
                    continue
                if msg["type"] == "camera_drift":  # about the camera, not an answer to a frame
                    stats.drift_messages += 1
                    continue
                answered += 1
                if msg["type"] == "result":
                    stats.latency[msg["frame_index"]] = now - stats.sent[msg["frame_index"]]
                else:
                    stats.errors.append(f"frame {msg.get('frame_index')}: {msg.get('code')}")

        await asyncio.gather(send(), receive())
    return stats


async def http_stream(
    client: httpx.AsyncClient, sid: str, frames: list[bytes], n: int, fps: float, t0: float
) -> StreamStats:
    stats = StreamStats()

    async def one(k: int) -> None:
        await sleep_until(t0 + k / fps)
        stats.sent[k] = start = time.perf_counter()
        try:
            r = await client.post(
                f"/v1/streams/{sid}/frames", params={"frame_index": k, "fps": fps}, content=frames[k % len(frames)]
            )
        except httpx.HTTPError as exc:
            stats.errors.append(f"frame {k}: {type(exc).__name__}")
            return
        if r.status_code == 200:
            stats.latency[k] = time.perf_counter() - start
        else:
            stats.errors.append(f"frame {k}: HTTP {r.status_code} {r.text[:80]}")

    await asyncio.gather(*(one(k) for k in range(n)))
    return stats


async def run_load(args: argparse.Namespace, url: str, headers: dict, clips: list[list[bytes]]) -> list[StreamStats]:
    n = int(round(args.duration * args.fps))
    start = time.perf_counter() + 0.5
    # cameras are not synchronised: stagger the streams evenly over one frame interval
    offsets = [start + i / (args.fps * args.streams) for i in range(args.streams)]
    if args.transport == "ws":
        jobs = [ws_stream(url, headers, f"load-{i}", clips[i], n, args.fps, offsets[i]) for i in range(args.streams)]
        return list(await asyncio.gather(*jobs))
    limits = httpx.Limits(max_connections=args.streams * 8)
    async with httpx.AsyncClient(base_url=url, headers=headers, limits=limits, timeout=30) as client:
        jobs = [http_stream(client, f"load-{i}", clips[i], n, args.fps, offsets[i]) for i in range(args.streams)]
        return list(await asyncio.gather(*jobs))


def server_figures(url: str, headers: dict) -> dict[str, float]:
    text = httpx.get(f"{url}/metrics", headers=headers).text
    values: dict[str, float] = {}
    for name in (
        "anomaly_batch_size_sum",
        "anomaly_batch_size_count",
        "anomaly_model_batch_duration_seconds_sum",
        "anomaly_frames_scored_total",
    ):
        m = re.search(rf"^{name} ([0-9.e+-]+)$", text, re.M)
        values[name] = float(m.group(1)) if m else float("nan")
    return values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=ROOT / "runs" / "serve" / "model.pt")
    parser.add_argument("--streams", type=int, default=4)
    parser.add_argument("--fps", type=float, default=25.0, help="frames per second per stream")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of sending")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds at the start left out of the figures")
    parser.add_argument("--quality", type=int, default=90, help="JPEG quality of the frames")
    parser.add_argument("--transport", choices=("ws", "http"), default="ws")
    parser.add_argument("--url", default=None, help="use a running server instead of starting one")
    parser.add_argument("--token", default=None, help="bearer token (with --url; or set for the started server)")
    parser.add_argument("serve_args", nargs="*", help="extra `anomaly serve` options, after --")
    args = parser.parse_args()

    n_unique = int(min(args.duration * args.fps, 300))
    clips = [encoded_frames(CLIPS[i % len(CLIPS)], n_unique, args.quality) for i in range(args.streams)]
    height, width = cv2.imdecode(np.frombuffer(clips[0][0], np.uint8), cv2.IMREAD_COLOR).shape[:2]
    mean_kb = np.mean([len(f) for c in clips for f in c]) / 1024
    headers = {"authorization": f"Bearer {args.token}"} if args.token else {}

    proc = None
    url = args.url
    if url is None:
        url = f"http://127.0.0.1:{free_port()}"
        proc = start_server(args.model, int(url.rsplit(":", 1)[1]), args.token, args.serve_args)
    try:
        wait_ready(url, proc)
        before = server_figures(url, headers)
        server_ps = psutil.Process(proc.pid) if proc else None
        cpu_before = sum(server_ps.cpu_times()[:2]) if server_ps else 0.0
        wall0 = time.perf_counter()
        stats = asyncio.run(run_load(args, url, headers, clips))
        wall = time.perf_counter() - wall0
        cpu = (sum(server_ps.cpu_times()[:2]) - cpu_before) if server_ps else float("nan")
        after = server_figures(url, headers)
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)

    skip = int(args.warmup * args.fps)
    latencies = np.array([v for s in stats for k, v in s.latency.items() if k >= skip]) * 1000
    answered = sum(len(s.latency) for s in stats)
    sent = sum(len(s.sent) for s in stats)
    errors = [e for s in stats for e in s.errors]
    missing = sent - answered - len(errors)
    batches = after["anomaly_batch_size_count"] - before["anomaly_batch_size_count"]
    batch_frames = after["anomaly_batch_size_sum"] - before["anomaly_batch_size_sum"]
    model_s = after["anomaly_model_batch_duration_seconds_sum"] - before["anomaly_model_batch_duration_seconds_sum"]
    p50, p95, p99 = np.percentile(latencies, [50, 95, 99]) if len(latencies) else (np.nan,) * 3

    print(
        f"load: {args.streams} streams x {args.fps:g} fps for {args.duration:g} s over {args.transport}, "
        f"{width}x{height} JPEG q{args.quality} (mean {mean_kb:.0f} KiB), {os.cpu_count()} CPU cores"
    )
    print(f"frames sent        : {sent}")
    print(f"frames answered    : {answered}  ({answered / wall:.1f} frames/s over {wall:.1f} s)")
    print(f"errors             : {len(errors)}" + (f"  e.g. {errors[:3]}" if errors else ""))
    print(f"unanswered         : {missing}")
    print(f"slow_down messages : {sum(s.slow_downs for s in stats)}")
    print(f"camera_drift msgs  : {sum(s.drift_messages for s in stats)}")
    print(f"latency (ms), after {args.warmup:g} s warm-up, {len(latencies)} frames:")
    print(
        f"  p50 {p50:7.1f}   p95 {p95:7.1f}   p99 {p99:7.1f}   max {latencies.max() if len(latencies) else np.nan:7.1f}"
    )
    if batches:
        print(
            f"server: {batches:.0f} batches, mean {batch_frames / batches:.2f} frames, "
            f"model {1000 * model_s / batches:.1f} ms/batch ({1000 * model_s / batch_frames:.2f} ms/frame)"
        )
    if proc is not None:
        print(f"server CPU: {cpu:.1f} s over {wall:.1f} s wall ({100 * cpu / wall:.0f}% of one core)")
    ok = not errors and not missing and p99 < 150
    print(f"target (p99 < 150 ms, no errors): {'met' if ok else 'NOT met'}")


if __name__ == "__main__":
    main()
