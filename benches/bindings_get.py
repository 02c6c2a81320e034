"""odi.get (Python) against `odi get` and `curl -L` on the same artifact through a loopback
directory and relay; prints each one's median and best of RUNS downloads and the ratios.

All three write the same output path, next to the relay's copy (one filesystem), and start with
no dirty pages (`sync` before each run, outside the timing). `odi.get` and `odi get` return once
the file is verified and fsynced, so curl is also timed with an fsync of its file and directory
after it ("curl -L + fsync"); its time without one is printed for context.

usage: python bindings_get.py ODI_BIN [SIZE_MIB] [RUNS]
(with a venv where `import odi` works; benches/bindings.sh builds both in release and runs it)"""

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


def cpu_model() -> str:
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "unknown"


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
                report = odi.get(url, out)
                if report.sha256 != digest or report.size != size << 20:
                    sys.exit(f"odi.get saved {report.size} bytes with {report.sha256}")

            def cli_get():
                subprocess.run([odi_bin, "get", "-o", str(out), url], env=env, check=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

            def curl():
                subprocess.run(["curl", "-sSfL", "-o", str(out), url], check=True)

            def fsync_out():
                # What `odi get` does before it returns: the file and its directory made durable.
                fd = os.open(out, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
                fd = os.open(root, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)

            sides = [("odi.get", python_get), ("odi get", cli_get), ("curl -L", curl)]
            samples = {name: [] for name, _ in sides}
            samples["curl -L + fsync"] = []
            # Round 0 is the unmeasured warm-up (page cache, the relay's state, the module's
            # runtime). Each round runs the three in a rotated order, so a slow spell or the
            # write-back of an earlier file does not always land on the same side.
            for round_ in range(runs + 1):
                for name, run in sides[round_ % 3:] + sides[:round_ % 3]:
                    out.unlink(missing_ok=True)
                    Path(f"{out}.part").unlink(missing_ok=True)
                    os.sync()  # the previous side's dirty pages are not this side's to write
                    start = time.perf_counter()
                    run()
                    mid = time.perf_counter()
                    if name == "curl -L":
                        fsync_out()
                    end = time.perf_counter()
                    if out.stat().st_size != size << 20:
                        sys.exit(f"{name} saved {out.stat().st_size} bytes, not {size << 20}")
                    if round_ == 0:
                        with open(out, "rb") as f:
                            got = hashlib.file_digest(f, "sha256").hexdigest()
                        if got != digest:
                            sys.exit(f"{name} saved bytes with sha256 {got}, not {digest}")
                        continue
                    samples[name].append(mid - start)
                    if name == "curl -L":
                        samples["curl -L + fsync"].append(end - start)
                    print(f"  run {round_}: {name:16} {mid - start:7.3f} s", file=sys.stderr)
            median = {name: statistics.median(s) for name, s in samples.items()}
            for name, s in samples.items():
                runs_mib = ", ".join(f"{size / t:.0f}" for t in s)
                print(f"{name:16} median {median[name]:7.3f} s {size / median[name]:8.1f} MiB/s, best {size / min(s):8.1f} MiB/s; runs [{runs_mib}] MiB/s")
            print(f"odi.get / odi get throughput:         {median['odi get'] / median['odi.get']:.3f}x (target >= 0.95)")
            print(f"odi get / curl -L + fsync throughput: {median['curl -L + fsync'] / median['odi get']:.3f}x")
            print(f"odi get / curl -L throughput:         {median['curl -L'] / median['odi get']:.3f}x (curl's bytes not yet on disk)")
            print(f"odi.get / curl -L + fsync throughput: {median['curl -L + fsync'] / median['odi.get']:.3f}x")
            print(f"machine: nproc {os.cpu_count()}, cpu {cpu_model()}, kernel {os.uname().release}, load {os.getloadavg()[0]:.2f}")
        finally:
            for p in procs:
                p.kill()
                p.wait()


if __name__ == "__main__":
    main()
