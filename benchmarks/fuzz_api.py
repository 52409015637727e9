"""The web API's contract fuzz (tests/test_web_contract.py) against a live server instead of the in-process app.

Without ``--url`` it starts ``covidxray serve`` on 127.0.0.1 (a free port, the shipped default model unless
``--model``, an audit log in a temporary folder), waits for /healthz, runs the schemathesis test against it over
HTTP and stops the server. With ``--url`` it checks that deployment instead (only servers you run or may test).
Prints requests per operation and status, writes ``benchmarks/results/fuzz_api.json``; exits with pytest's code.

    .venv/bin/python benchmarks/fuzz_api.py [--url http://127.0.0.1:8000] [--model BUNDLE] [--max-files 4]
                                           [--max-examples 100]
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
TEST = "tests/test_web_contract.py"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(port: int, model: str | None, max_files: int, tmp: Path) -> subprocess.Popen:
    """``covidxray serve`` as a subprocess (the real CLI); returns once /healthz answers."""
    cmd = [sys.executable, "-m", "covidxray.cli", "serve", "--port", str(port), "--log-level", "warning"]
    cmd += ["--max-files", str(max_files), "--audit-db", f"sqlite:///{tmp}/audit.sqlite"]
    cmd += ["--model", model] if model else []
    server = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while True:
        if server.poll() is not None:
            raise SystemExit(f"server exited: {server.stderr.read().decode()[-2000:]}")
        try:
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1.0).raise_for_status()
            return server
        except httpx.HTTPError:
            if time.monotonic() > deadline:
                server.terminate()
                raise SystemExit("server did not answer /healthz within 300 s") from None
            time.sleep(0.3)


def run_fuzz(url: str, max_examples: int, log: Path) -> tuple[int, str, float]:
    """Run the contract test against ``url``; (pytest exit code, its output, seconds)."""
    env = {
        **os.environ,
        "COVIDXRAY_CONTRACT_URL": url,
        "COVIDXRAY_CONTRACT_MAX_EXAMPLES": str(max_examples),
        "COVIDXRAY_CONTRACT_LOG": str(log),
    }
    cmd = [sys.executable, "-m", "pytest", TEST, "-q", "-p", "no:cacheprovider"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    return proc.returncode, proc.stdout + proc.stderr, time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", default=None, help="a running server to check (default: start covidxray serve)")
    ap.add_argument("--model", default=None, help="bundle for the started server (default: the shipped one)")
    ap.add_argument("--max-files", type=int, default=4, help="--max-files of the started server")
    ap.add_argument("--max-examples", type=int, default=100, help="generated cases per operation and phase")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "fuzz_api.json")
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "requests.jsonl"
        server = None
        url = args.url
        if url is None:
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            server = start_server(port, args.model, args.max_files, Path(tmp))
        try:
            code, output, seconds = run_fuzz(url, args.max_examples, log)
        finally:
            if server is not None:
                server.terminate()
                server.wait(timeout=30)
        records = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []

    # Requests with methods an operation does not have (the 405 probes) are counted together.
    counts = collections.Counter(
        ("(undeclared methods)" if r["status"] == 405 else r["operation"], r["status"]) for r in records
    )
    server_errors = sum(1 for r in records if r["status"] >= 500)
    result = {
        "benchmark": "fuzz_api",
        "time": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, "benchmarks/fuzz_api.py", *(argv or sys.argv[1:])]),
        "target": "started covidxray serve" if server is not None else url,
        "max_examples": args.max_examples,
        "requests": len(records),
        "by_operation_and_status": {f"{op} -> {status}": n for (op, status), n in sorted(counts.items())},
        "server_errors": server_errors,
        "pytest_exit_code": code,
        "passed": code == 0,
        "seconds": round(seconds, 1),
        "machine": {
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")

    print(
        f"schemathesis against {url}: {len(records)} requests in {seconds:.0f} s (max-examples {args.max_examples})"
    )
    print(f"{'operation':<28} {'status':>6} {'requests':>9}")
    for (op, status), n in sorted(counts.items()):
        print(f"{op:<28} {status:>6} {n:>9}")
    print(
        f"5xx responses: {server_errors}; contract {'holds' if code == 0 else 'VIOLATED'} (pytest exit {code})"
    )
    if code != 0:
        print(output[-6000:])
    print(f"wrote {args.out.relative_to(REPO) if args.out.is_relative_to(REPO) else args.out}")
    return code


if __name__ == "__main__":
    sys.exit(main())
