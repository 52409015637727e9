"""Hostile-input and slow-client measurements of ``covidxray serve`` (issue #14): what was sent, what came back,
and the server's peak resident memory.

Each scenario starts a fresh server (the real CLI, as a subprocess, ``--audit-db none``), samples its VmRSS from
/proc every 10 ms, sends the scenario, and records the statuses, the time and the peak / settled memory.

    .venv/bin/python benchmarks/bench_reliability.py [--label after] [--src DIR] [--model BUNDLE] [--only NAME]

``--src DIR`` puts another covidxray source tree first on PYTHONPATH (e.g. ``/work/main/src`` to measure the code
before a change; then only the options both versions know are passed). Writes
``benchmarks/results/bench_reliability_<label>.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import io
import json
import os
import platform
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import httpx
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
MB = 1024 * 1024


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return 0.0


def bomb_png(width: int, height: int) -> bytes:
    """A valid PNG of a few hundred bytes whose header claims ``width`` x ``height`` grey pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    body = chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64, 9)) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + body + b"\x00" * (370 - 8 - len(body))


@functools.lru_cache(maxsize=4)
def flat_png(side: int, mode: str = "RGB") -> bytes:
    """A highly compressible ``side`` x ``side`` PNG (kilobytes on disk, megapixels decoded)."""
    buf = io.BytesIO()
    Image.new(mode, (side, side), (90, 90, 90) if mode == "RGB" else 90).save(
        buf, format="PNG", compress_level=9
    )
    return buf.getvalue()


class Server:
    """``covidxray serve`` in a subprocess with a 10 ms VmRSS sampler."""

    def __init__(self, args: argparse.Namespace, extra: list[str]):
        self.port = free_port()
        env = dict(os.environ)
        if args.src:
            env["PYTHONPATH"] = str(args.src) + os.pathsep + env.get("PYTHONPATH", "")
        cmd = [sys.executable, "-m", "covidxray.cli", "serve", "--port", str(self.port), "--audit-db", "none"]
        cmd += ["--log-level", "warning", *(["--model", args.model] if args.model else []), *extra]
        self.proc = subprocess.Popen(
            cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 120
        while True:
            if self.proc.poll() is not None:
                raise SystemExit(f"server exited: {self.proc.stderr.read().decode()[-2000:]}")
            try:
                if httpx.get(self.url + "/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("server did not start")
            time.sleep(0.2)
        self.idle = rss_mb(self.proc.pid)
        self.peak = self.idle
        self._stop = False
        self._sampler = threading.Thread(target=self._sample, daemon=True)
        self._sampler.start()

    def _sample(self) -> None:
        while not self._stop and self.proc.poll() is None:
            self.peak = max(self.peak, rss_mb(self.proc.pid))
            time.sleep(0.01)

    def settled(self, seconds: float = 2.0) -> float:
        time.sleep(seconds)
        return rss_mb(self.proc.pid)

    def close(self) -> None:
        self._stop = True
        self.proc.terminate()
        self.proc.wait(timeout=30)


def post(url: str, files: list[tuple[str, bytes]], timeout: float = 300) -> tuple[int, str, float]:
    start = time.monotonic()
    try:
        r = httpx.post(
            url + "/api/v1/predict",
            files=[("files", (n, d, "image/png")) for n, d in files],
            timeout=timeout,
        )
        code, body = r.status_code, r.text
    except httpx.HTTPError as exc:
        code, body = 0, f"{type(exc).__name__}: {exc}"
    return code, body, time.monotonic() - start


def slow_clients(port: int, n: int, files: int, file_mb: float, stall_s: float) -> list[str]:
    """``n`` connections each send a chunked multipart body of ``files`` x ``file_mb`` MB at full speed, never
    send its end, stall ``stall_s`` seconds, then close. The first line each got back (or 'no answer')."""
    answers: list[str] = []
    lock = threading.Lock()
    part = b"\x89PNG\r\n\x1a\n" + b"\x00" * (int(file_mb * MB) - 8)

    def one() -> None:
        s = socket.create_connection(("127.0.0.1", port))
        s.settimeout(stall_s + 5)
        got = "no answer"
        try:
            s.sendall(
                b"POST /api/v1/predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                b"Content-Type: multipart/form-data; boundary=B\r\n\r\n"
            )
            for i in range(files):
                head = f'--B\r\nContent-Disposition: form-data; name="files"; filename="{i}.png"\r\n\r\n'.encode()
                for block in (head, part, b"\r\n"):
                    for k in range(0, len(block), MB):
                        piece = block[k : k + MB]
                        s.sendall(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
            deadline = time.monotonic() + stall_s
            while time.monotonic() < deadline:
                s.settimeout(max(0.1, deadline - time.monotonic()))
                try:
                    data = s.recv(4096)
                    if data:
                        got = data.split(b"\r\n", 1)[0].decode("latin-1")
                    break
                except TimeoutError:
                    break
        except OSError as exc:  # the server refused and closed mid-send
            try:
                data = s.recv(4096)
                got = data.split(b"\r\n", 1)[0].decode("latin-1") if data else f"closed ({exc.strerror})"
            except OSError:
                got = f"closed ({exc.strerror or exc})"
        finally:
            s.close()
        with lock:
            answers.append(got)

    threads = [threading.Thread(target=one) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return answers


def scenarios(args: argparse.Namespace) -> list[dict]:
    new = not args.src  # the options only the new code knows
    stall = 20.0
    timeout_opts = ["--body-timeout", "10"] if new else []
    return [
        {
            "name": "bomb",
            "sent": "1 PNG, 370 bytes, header claims 30000x30000 px",
            "files": [("bomb.png", bomb_png(30000, 30000))],
        },
        {"name": "huge1", "sent": "1 PNG 11000x11000 px (121 Mpx)", "files": [("huge.png", flat_png(11000))]},
        {
            "name": "huge4",
            "sent": "4 PNG 11000x11000 px in one request",
            "files": [(f"{i}.png", flat_png(11000)) for i in range(4)],
        },
        {
            "name": "big4",
            "sent": "4 PNG 6000x6000 px (36 Mpx, under the cap) in one request",
            "files": [(f"{i}.png", flat_png(6000)) for i in range(4)],
        },
        {
            "name": "slow_big",
            "sent": f"4 connections x 16 files x 19 MB, chunked, never finished, closed after {stall:g} s",
            "slow": (4, 16, 19.0, stall),
            "opts": timeout_opts,
        },
        {
            "name": "slow_under",
            "sent": f"6 connections x 5 files x 19 MB (under the request cap), never finished, closed after {stall:g} s",
            "slow": (6, 5, 19.0, stall),
            "opts": timeout_opts,
        },
    ]


def run(args: argparse.Namespace) -> dict:
    rows = []
    for sc in scenarios(args):
        if args.only and sc["name"] not in args.only:
            continue
        server = Server(args, sc.get("opts", []))
        try:
            start = time.monotonic()
            if "files" in sc:
                code, body, secs = post(server.url, sc["files"])
                try:
                    got = f"{code} {json.loads(body).get('error', 'ok')}" if code else body
                except ValueError:
                    got = f"{code} {body[:60]}"
                if code == 200:
                    got = f"200 ({len(json.loads(body)['predictions'])} predictions)"
            else:
                answers = slow_clients(server.port, *sc["slow"])
                secs = time.monotonic() - start
                counts: dict[str, int] = {}
                for a in answers:
                    counts[a] = counts.get(a, 0) + 1
                got = "; ".join(f"{v} x {k}" for k, v in sorted(counts.items()))
            peak = server.peak
            after = server.settled()
            alive = httpx.get(server.url + "/healthz", timeout=10).status_code == 200
        finally:
            server.close()
        row = {
            "scenario": sc["name"],
            "sent": sc["sent"],
            "got": got,
            "seconds": round(secs, 2),
            "rss_idle_mb": round(server.idle),
            "rss_peak_mb": round(peak),
            "rss_after_mb": round(after),
            "server_alive": alive,
        }
        print(json.dumps(row), flush=True)
        rows.append(row)
    return {
        "benchmark": "bench_reliability",
        "label": args.label,
        "code": str(args.src or REPO / "src"),
        "command": " ".join([Path(sys.executable).name, "benchmarks/bench_reliability.py", *sys.argv[1:]]),
        "when": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "rows": rows,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--label", default="after")
    ap.add_argument("--src", type=Path, default=None, help="another covidxray src/ to measure (e.g. main's)")
    ap.add_argument("--model", default=None, help="bundle to serve (default: the shipped default model)")
    ap.add_argument("--only", nargs="*", default=None, help="scenario names to run")
    args = ap.parse_args(argv)
    result = run(args)
    out = REPO / "benchmarks" / "results" / f"bench_reliability_{args.label}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print("\n| scenario | sent | got | s | RSS idle / peak / after (MB) |\n|---|---|---|---|---|")
    for r in result["rows"]:
        print(
            f"| {r['scenario']} | {r['sent']} | {r['got']} | {r['seconds']} | "
            f"{r['rss_idle_mb']} / {r['rss_peak_mb']} / {r['rss_after_mb']} |"
        )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
