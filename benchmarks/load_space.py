"""Load test of the Space: several concurrent gradio_client clients against a local server.

Starts ``space/app.py`` on a free loopback port (or uses ``--url`` of one already running on this machine), then
``--clients`` threads each send ``--requests`` cartoonize calls with the example photos, and reports latency
percentiles (queueing included), throughput and failures. Bounded in count and time; loopback only.

    python benchmarks/load_space.py --clients 4 --requests 5 --max-side 512
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def start_server() -> tuple[subprocess.Popen, str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "space" / "app.py"), "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}/"
    for _ in range(240):
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return process, url
        except OSError:
            time.sleep(0.5)
    process.kill()
    raise SystemExit("the Space did not start within 2 minutes")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default=None, help="a running Space on this machine (default: start one)")
    parser.add_argument("--clients", type=int, default=4, help="concurrent clients (4)")
    parser.add_argument("--requests", type=int, default=5, help="requests per client (5)")
    parser.add_argument("--max-side", type=int, default=512, help="output size asked for (512)")
    parser.add_argument("--timeout", type=float, default=300, help="give up on the whole run after this many seconds")
    args = parser.parse_args()

    from gradio_client import Client, handle_file

    process, url = (None, args.url) if args.url else start_server()
    photos = sorted((ROOT / "space" / "examples").glob("*.jpg"))
    latencies: list[float] = []
    failures: list[str] = []
    lock = threading.Lock()
    deadline = time.time() + args.timeout

    def client_loop(index: int) -> None:
        client = Client(url, verbose=False)
        for i in range(args.requests):
            if time.time() > deadline:
                return
            photo = photos[(index + i) % len(photos)]
            start = time.perf_counter()
            try:
                client.predict(handle_file(str(photo)), "bundled", args.max_side, 0.0, api_name="/cartoonize")
                with lock:
                    latencies.append(time.perf_counter() - start)
            except Exception as error:  # a failure is a result here, counted and shown
                with lock:
                    failures.append(f"{type(error).__name__}: {error}")

    try:
        Client(url, verbose=False).predict(
            handle_file(str(photos[0])), "bundled", args.max_side, 0.0, api_name="/cartoonize"
        )
        start = time.perf_counter()
        threads = [threading.Thread(target=client_loop, args=(i,)) for i in range(args.clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        wall = time.perf_counter() - start
    finally:
        if process is not None:
            process.terminate()
            process.wait(timeout=30)

    total = args.clients * args.requests
    print(f"### Space load — {date.today()} — {platform.machine()}, {os.cpu_count()} cores\n")
    print(f"Command: `python benchmarks/load_space.py --clients {args.clients} --requests {args.requests} "
          f"--max-side {args.max_side}` (bundled model, example photos, queue concurrency 1)\n")  # fmt: skip
    print("| requests | ok | failed | p50 (s) | p90 (s) | p99 (s) | max (s) | throughput (req/s) |")
    print("|---|---|---|---|---|---|---|---|")
    if latencies:
        print(
            f"| {total} | {len(latencies)} | {len(failures)} | {statistics.median(latencies):.2f} | "
            f"{percentile(latencies, 90):.2f} | {percentile(latencies, 99):.2f} | {max(latencies):.2f} | "
            f"{len(latencies) / wall:.2f} |"
        )
    for failure in failures[:5]:
        print(f"\nfailure: {failure}")


if __name__ == "__main__":
    main()
