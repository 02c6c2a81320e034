"""odi.get (Python) against `odi get` and `curl -L` on the same artifact through a loopback
directory and relay; prints each one's median of RUNS downloads and the ratios.

usage: python bindings_get.py ODI_BIN [SIZE_MIB] [RUNS]
(run with the venv bindings/python/run-tests makes, where `import odi` works)"""

import hashlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import odi

ADMIN = "be9cbe9c" * 8
ENROLL = "e3e3be9c" * 8


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(secs, what, check):
    deadline = time.monotonic() + secs
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception:
            pass
        time.sleep(0.2)
    sys.exit(f"timed out after {secs}s waiting for {what}")


def main() -> None:
    odi_bin = sys.argv[1]
    size = int(sys.argv[2]) if len(sys.argv) > 2 else 1024
    runs = int(sys.argv[3]) if len(sys.argv) > 3 else 3
    env = dict(os.environ, ODI_ADMIN_TOKEN=ADMIN, ODI_ENROLL_TOKEN=ENROLL, ODI_LOG="warn")
    env.pop("ODI_DIRECTORY", None)

    def cli(*args):
        out = subprocess.run([odi_bin, *args], env=env, capture_output=True, text=True)
        if out.returncode != 0:
            sys.exit(f"odi {args} failed: {out.stderr}")
        return out.stdout

    procs = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        try:
            port = free_port()
            directory = f"http://127.0.0.1:{port}"
            procs.append(subprocess.Popen([odi_bin, "directory", "--listen", f"127.0.0.1:{port}", "--data", str(root / "dir"),
                                           "--heartbeat-interval", "300ms", "--probation", "0s"], env=env,
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            wait_for(20, "the directory", lambda: urllib.request.urlopen(f"{directory}/healthz", timeout=2).status == 200)
            cli("catalog", "create", "b", "--directory", directory, "--replicas", "1")
            rport = free_port()
            procs.append(subprocess.Popen([odi_bin, "relay", "--listen", f"127.0.0.1:{rport}", "--data", str(root / "r"),
                                           "--directory", directory, "--public-url", f"http://127.0.0.1:{rport}",
                                           "--disk-budget", f"{2 * size + 64}MiB", "--scrub-rate", "0"], env=env,
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            src = root / "big.bin"
            with open(src, "wb") as f:
                block = os.urandom(1 << 20)
                for _ in range(size):
                    f.write(block)
                    block = hashlib.sha256(block).digest() + block[32:]
            cli("publish", "--directory", directory, "--catalog", "b", "--path", "big.bin", str(src))
            digest = hashlib.sha256(src.read_bytes()).hexdigest()
            blob = root / "r" / "blobs" / "blobs" / "sha256" / digest[:2] / digest
            wait_for(600, "the relay to hold the file", lambda: blob.is_file()
                     and any(r["status"] == "ready" for r in json.loads(cli("relays", "--directory", directory, "--json"))))
            url = f"{directory}/r/b/big.bin"
            out = root / "out.bin"

            def python_get():
                out.unlink(missing_ok=True)
                report = odi.get(url, out)
                assert report.sha256 == digest

            def cli_get():
                out.unlink(missing_ok=True)
                subprocess.run([odi_bin, "get", "-o", str(out), url], env=env, check=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

            def curl():
                out.unlink(missing_ok=True)
                subprocess.run(["curl", "-sSfL", "-o", str(out), url], check=True)

            times = {}
            for name, run in [("odi.get", python_get), ("odi get", cli_get), ("curl -L", curl)]:
                run()  # warm the page cache and the relay's state
                samples = []
                for _ in range(runs):
                    start = time.perf_counter()
                    run()
                    samples.append(time.perf_counter() - start)
                times[name] = statistics.median(samples)
            for name, t in times.items():
                print(f"{name:8} {t:7.3f} s  {size / t:8.1f} MiB/s")
            print(f"odi.get / odi get throughput: {times['odi get'] / times['odi.get']:.3f}x")
            print(f"odi.get / curl throughput:    {times['curl -L'] / times['odi.get']:.3f}x")
        finally:
            for p in procs:
                p.kill()
                p.wait()


if __name__ == "__main__":
    main()
