"""Soak test of the streaming service: N WebSocket cameras for a long time, with hostile requests mixed in.

    python benchmarks/soak.py --model runs/serve/model.pt [--streams 8] [--fps 10] [--duration 600]
        [--bad-per-s 5] [--url http://host:port --token TOKEN] [-- extra `anomaly serve` options]

Without --url it starts `anomaly serve` on a free port (CPU) and stops it with SIGTERM at the end.
Each stream sends the sample clips' frames (640x360 JPEG) at a fixed rate and reads every answer;
about one frame in 50 is preceded by a bad tag or is itself corrupt. Alongside, a chaos task sends
`--bad-per-s` random bad requests: corrupt or empty images, 400-digit frame indices, fps=5e-324,
malformed multipart, bodies abandoned halfway, idle connections and half-sent headers.

It ends by printing the server's 5xx count (from its own metrics, 503 backpressure listed apart),
the queue depth, unanswered WebSocket frames and the server's RSS at the start and the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import websockets
from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, str(Path(__file__).resolve().parent))
from load_test import CLIPS, ROOT, encoded_frames, free_port, start_server, wait_ready  # noqa: E402

HUGE = "9" * 400


@dataclass
class Tally:
    sent: int = 0
    results: int = 0
    frame_errors: int = 0
    unanswered: int = 0
    bad_requests: int = 0
    bad_answers: dict[str, int] | None = None
    transport_errors: int = 0

    def answer(self, status: str) -> None:
        self.bad_answers = self.bad_answers or {}
        self.bad_answers[status] = self.bad_answers.get(status, 0) + 1


async def camera(url: str, headers: dict, sid: str, frames: list[bytes], fps: float, until: float, t: Tally) -> None:
    """One stream: frames at `fps`, every answer read; some bad tags and corrupt frames mixed in."""
    rng = random.Random(sid)
    ws_url = url.replace("http://", "ws://") + f"/v1/streams/{sid}/ws?fps={fps}"
    async with websockets.connect(ws_url, additional_headers=headers, max_size=None) as ws:
        expected = 0
        done_sending = asyncio.Event()

        async def send() -> None:
            nonlocal expected
            k, t0 = 0, time.perf_counter()
            while time.monotonic() < until:
                await asyncio.sleep(max(0.0, t0 + k / fps - time.perf_counter()))
                roll = rng.random()
                if roll < 0.01:
                    await ws.send(json.dumps({"frame_index": int(HUGE)}))  # refused tag: one error, no frame
                    expected += 1
                elif roll < 0.02:
                    await ws.send('{"timestamp_s": 1e400}')
                    expected += 1
                frame = frames[k % len(frames)]
                if rng.random() < 0.01:
                    frame = frame[: len(frame) // 3]  # corrupt frame: an error in its place
                await ws.send(frame)
                expected += 1
                t.sent += 1
                k += 1
            done_sending.set()

        async def receive() -> None:
            got = 0
            while not (done_sending.is_set() and got >= expected):
                try:
                    msg = json.loads(await asyncio.wait_for(ws.recv(), timeout=30))
                except asyncio.TimeoutError:
                    break
                if msg["type"] == "slow_down":
                    continue
                got += 1
                if msg["type"] == "result":
                    t.results += 1
                else:
                    t.frame_errors += 1
            t.unanswered += max(0, expected - got)

        await asyncio.gather(send(), receive())


async def chaos(url: str, headers: dict, frame: bytes, per_s: float, until: float, t: Tally) -> None:
    """Random bad requests at about `per_s` a second."""
    rng = random.Random(13)
    host, port = url.removeprefix("http://").split(":")
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=30) as client:

        async def raw(data: bytes, hold: float) -> None:
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(data)
            await writer.drain()
            await asyncio.sleep(hold)
            writer.close()

        attacks = [
            lambda: client.post("/v1/score", content=frame[: len(frame) // 2]),
            lambda: client.post("/v1/score", content=b""),
            lambda: client.post("/v1/score", content=b"\x89PNG\r\n\x1a\n" + b"\x00" * 100),
            lambda: client.post("/v1/streams/chaos/frames", params={"frame_index": HUGE}, content=frame),
            lambda: client.post("/v1/streams/chaos/frames", params={"fps": "5e-324"}, content=frame),
            lambda: client.post(
                "/v1/streams/chaos/frames", files=[("frames", ("f.jpg", frame))], data={"frame_index": HUGE}
            ),
            lambda: client.post(
                "/v1/score", content=b"--x\r\njunk", headers={"content-type": "multipart/form-data; boundary=x"}
            ),
            lambda: client.delete("/v1/streams/never-opened"),
            lambda: client.get("/v1/streams/x/frames"),
            lambda: raw(b"POST /v1/score HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n" + frame[:100], 0.2),
            lambda: raw(b"GET /healthz HTTP/1.1\r\nHost: x\r\n", 2.0),  # half-sent headers
            lambda: raw(b"", 2.0),  # idle connection
        ]
        pending: set[asyncio.Task] = set()

        async def one(attack) -> None:  # noqa: ANN001
            try:
                r = await attack()
                if isinstance(r, httpx.Response):
                    t.answer(str(r.status_code))
            except (httpx.HTTPError, OSError):
                t.transport_errors += 1

        while time.monotonic() < until:
            await asyncio.sleep(rng.expovariate(per_s))
            t.bad_requests += 1
            task = asyncio.create_task(one(rng.choice(attacks)))
            pending.add(task)
            task.add_done_callback(pending.discard)
        if pending:
            await asyncio.wait(pending, timeout=30)


def metrics(url: str, headers: dict) -> str:
    return httpx.get(f"{url}/metrics", headers=headers, timeout=10).text


def samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    return [(x.name, x.labels, x.value) for family in text_string_to_metric_families(text) for x in family.samples]


def statuses(text: str) -> dict[str, float]:
    """anomaly_http_requests_total summed by status."""
    out: dict[str, float] = {}
    for name, labels, value in samples(text):
        if name == "anomaly_http_requests_total":
            out[labels["status"]] = out.get(labels["status"], 0.0) + value
    return out


def gauge(text: str, name: str) -> float:
    return next((value for n, _, value in samples(text) if n == name), float("nan"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=ROOT / "runs" / "serve" / "model.pt")
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--fps", type=float, default=10.0, help="frames per second per stream")
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of load")
    parser.add_argument("--bad-per-s", type=float, default=5.0, help="random bad requests per second")
    parser.add_argument("--url", default=None, help="use a running server instead of starting one")
    parser.add_argument("--token", default=None)
    parser.add_argument("serve_args", nargs="*", help="extra `anomaly serve` options, after --")
    args = parser.parse_args()

    clips = [encoded_frames(CLIPS[i % len(CLIPS)], 100, 90) for i in range(args.streams)]
    headers = {"authorization": f"Bearer {args.token}"} if args.token else {}
    proc = None
    url = args.url
    if url is None:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        proc = start_server(args.model, port, args.token, args.serve_args)
    try:
        wait_ready(url, proc)
        server = psutil.Process(proc.pid) if proc is not None else None
        # one scored frame first, so the start RSS includes the loaded model and a warmed-up batch
        httpx.post(f"{url}/v1/score", content=clips[0][0], headers=headers, timeout=30)
        rss_start = server.memory_info().rss if server else float("nan")
        rss_peak = rss_start
        rss_log: list[tuple[float, float]] = []  # (seconds into the load, RSS)
        tally = Tally()
        until = time.monotonic() + args.duration

        async def run() -> None:
            nonlocal rss_peak
            jobs = [camera(url, headers, f"soak-{i}", clips[i], args.fps, until, tally) for i in range(args.streams)]
            jobs.append(chaos(url, headers, clips[0][0], args.bad_per_s, until, tally))
            gathered = asyncio.gather(*jobs)
            t0 = time.monotonic()
            while not gathered.done():
                await asyncio.wait([gathered], timeout=5)
                if server is not None:
                    rss = server.memory_info().rss
                    rss_peak = max(rss_peak, rss)
                    rss_log.append((time.monotonic() - t0, rss))
            await gathered

        start = time.monotonic()
        asyncio.run(run())
        elapsed = time.monotonic() - start
        time.sleep(1.0)  # let the last answers and closes settle
        text = metrics(url, headers)
        rss_end = server.memory_info().rss if server else float("nan")
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(60)
    by_status = statuses(text)
    five = {s: n for s, n in by_status.items() if s.startswith("5")}
    mib = 2**20
    print(
        f"soak: {args.streams} WebSocket streams x {args.fps:g} fps for {elapsed:.0f} s, {args.bad_per_s:g} bad req/s"
    )
    print(
        f"frames sent {tally.sent}, results {tally.results}, frame errors {tally.frame_errors}, "
        f"unanswered {tally.unanswered}"
    )
    print(f"bad requests {tally.bad_requests}: answers {dict(sorted((tally.bad_answers or {}).items()))}")
    print(f"HTTP requests by status (server metrics): {dict(sorted(by_status.items()))}")
    print(f"5xx: {int(sum(n for s, n in five.items() if s != '503'))} (excluding 503), 503: {int(five.get('503', 0))}")
    print(f"queue depth at the end: {gauge(text, 'anomaly_queued_frames'):.0f}")
    print(f"open WebSockets at the end: {gauge(text, 'anomaly_websocket_connections'):.0f}")
    print(f"server RSS: start {rss_start / mib:.1f} MiB, end {rss_end / mib:.1f} MiB, peak {rss_peak / mib:.1f} MiB")
    if rss_log:
        marks = [rss_log[min(len(rss_log) - 1, int(q * len(rss_log)))] for q in (0.25, 0.5, 0.75, 1.0)]
        print("server RSS over the run: " + ", ".join(f"{t:.0f} s {r / mib:.1f} MiB" for t, r in marks))
    if proc is not None:
        print(f"server exit status after SIGTERM: {code}")


if __name__ == "__main__":
    main()
