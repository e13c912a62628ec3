"""Load test of the Space: several concurrent gradio_client clients against a local server.

Starts ``space/app.py`` on a free loopback port (or uses ``--url`` of one already running on this machine), then
``--clients`` threads each send ``--requests`` cartoonize calls with the example photos, and reports latency
percentiles (queueing included), throughput and failures. Bounded in count and time; loopback only.

``--adversarial`` instead sends the hostile requests of issue 17 (an uploaded config folder, server paths and unknown
ids as the model, out-of-range sizes and smoothing), then one good request queued behind them, and reports how long
the refusals and the queued request took and the server's RSS before and after.

    python benchmarks/load_space.py --clients 4 --requests 5 --max-side 512
    python benchmarks/load_space.py --adversarial
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


def start_server(models: str = "bundled") -> tuple[subprocess.Popen, str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1", "GHIBLIGAN_MODELS": models}
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


def rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmRSS")).split()[1]) / 1024


def adversarial(url: str, pid: int, max_side: int) -> None:
    """Hostile requests, then a good one queued behind them; latencies and server RSS."""
    import tempfile

    import httpx
    from gradio_client import Client, handle_file

    with tempfile.TemporaryDirectory() as folder:
        config = Path(folder) / "config.json"
        config.write_text('{"_class_name": "UNetGenerator", "ngf": 300}')
        with open(config, "rb") as file:
            uploaded = httpx.post(f"{url}gradio_api/upload", files=[("files", ("config.json", file))]).json()[0]
    client = Client(url, verbose=False)
    photo = handle_file(str(ROOT / "space" / "examples" / "cat.jpg"))
    client.predict(photo, "bundled", max_side, 0.0, api_name="/cartoonize")  # warm
    cases = {
        "uploaded config folder": (str(Path(uploaded).parent), max_side, 0.0),
        "server path /etc": ("/etc", max_side, 0.0),
        "unknown Hub id": ("nobody/unknown", max_side, 0.0),
        "allow-listed, failed to load": ("nobody/no-such-model", max_side, 0.0),
        "max_side=100000": ("bundled", 100000, 0.0),
        "max_side='abc'": ("bundled", "abc", 0.0),
        "smoothing=5": ("bundled", max_side, 5),
    }
    rss_before = rss_mb(pid)
    start = time.perf_counter()
    jobs = {name: client.submit(photo, *args, api_name="/cartoonize") for name, args in cases.items()}
    queued = client.submit(photo, "bundled", max_side, 0.0, api_name="/cartoonize")
    print("| request | answer | seconds since all were sent |\n|---|---|---|")
    for name, job in jobs.items():
        try:
            job.result(timeout=120)
            answer = "served (!)"
        except Exception as error:  # the refusal is the result here
            answer = str(error)[:70]
        print(f"| {name} | {answer} | {time.perf_counter() - start:.2f} |")
    queued.result(timeout=120)
    print(f"| good request queued behind them | served | {time.perf_counter() - start:.2f} |")
    print(f"\nServer RSS: {rss_before:.0f} MB before the hostile requests, {rss_mb(pid):.0f} MB after.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default=None, help="a running Space on this machine (default: start one)")
    parser.add_argument("--clients", type=int, default=4, help="concurrent clients (4)")
    parser.add_argument("--requests", type=int, default=5, help="requests per client (5)")
    parser.add_argument("--max-side", type=int, default=512, help="output size asked for (512)")
    parser.add_argument("--timeout", type=float, default=300, help="give up on the whole run after this many seconds")
    parser.add_argument("--adversarial", action="store_true", help="hostile requests instead (starts its own server)")
    args = parser.parse_args()

    from gradio_client import Client, handle_file

    if args.adversarial:
        process, url = start_server(models="bundled,nobody/no-such-model")
        try:
            print(f"### Space under hostile requests — {date.today()} — {platform.machine()}, {os.cpu_count()} cores\n")
            print(f"Command: `python benchmarks/load_space.py --adversarial --max-side {args.max_side}`\n")
            adversarial(url, process.pid, args.max_side)
        finally:
            process.terminate()
            process.wait(timeout=30)
        return
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
