"""Starts a loopback ODI network from the `odi` binary (a directory and two relays), publishes a
file, rots one relay's copy on disk, then runs the given command with the directory's URL, the
artifact's URL path, its SHA-256, the enrollment token and a work directory appended; exits with
the command's status. Standard library only: no wheel needed.

usage: network.py ODI_BIN COMMAND..."""

import hashlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ADMIN = "c0dec0de" * 8
ENROLL = "e2e2c0de" * 8
MIB = 1 << 20


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
        time.sleep(0.1)
    sys.exit(f"timed out after {secs}s waiting for {what}")


def main() -> int:
    odi, command = sys.argv[1], sys.argv[2:]
    env = dict(os.environ, ODI_ADMIN_TOKEN=ADMIN, ODI_ENROLL_TOKEN=ENROLL, ODI_LOG="warn")
    env.pop("ODI_DIRECTORY", None)

    def cli(*args):
        out = subprocess.run([odi, *args], env=env, capture_output=True, text=True, timeout=60)
        if out.returncode != 0:
            sys.exit(f"odi {args} failed: {out.stderr}")
        return out.stdout

    procs = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        try:
            port = free_port()
            directory = f"http://127.0.0.1:{port}"
            procs.append(subprocess.Popen([odi, "directory", "--listen", f"127.0.0.1:{port}", "--data", str(root / "dir"),
                                           "--heartbeat-interval", "300ms", "--lease", "1500ms", "--probation", "0s"],
                                          env=env, stdout=subprocess.DEVNULL))
            wait_for(20, "the directory", lambda: urllib.request.urlopen(f"{directory}/healthz", timeout=2).status == 200)
            cli("catalog", "create", "c", "--directory", directory, "--replicas", "2")
            relays = []
            for i in range(2):
                port = free_port()
                data = root / f"r{i}"
                procs.append(subprocess.Popen([odi, "relay", "--listen", f"127.0.0.1:{port}", "--data", str(data),
                                               "--directory", directory, "--public-url", f"http://127.0.0.1:{port}",
                                               "--disk-budget", "1GiB", "--scrub-rate", "0"], env=env, stdout=subprocess.DEVNULL))
                relays.append(data)
            block = b"\x01" * 32
            payload = bytearray()
            while len(payload) < 3 * MIB + 777:
                block = hashlib.sha256(block).digest()
                payload += block
            payload = bytes(payload[: 3 * MIB + 777])
            (root / "big.bin").write_bytes(payload)
            digest = hashlib.sha256(payload).hexdigest()
            cli("publish", "--directory", directory, "--catalog", "c", "--path", "big.bin", str(root / "big.bin"))

            def ready():
                return sum(1 for r in json.loads(cli("relays", "--directory", directory, "--json")) if r["status"] == "ready")

            wait_for(60, "two ready relays", lambda: ready() == 2)
            blobs = [data / "blobs" / "blobs" / "sha256" / digest[:2] / digest for data in relays]
            wait_for(30, "both relays to hold the file", lambda: all(b.is_file() for b in blobs))
            with open(blobs[0], "r+b") as f:  # rot 16 bytes in the second chunk of one copy
                f.seek(MIB + 1234)
                old = f.read(16)
                f.seek(MIB + 1234)
                f.write(bytes(b ^ 0xFF for b in old))
            work = root / "work"
            work.mkdir()
            return subprocess.run([*command, directory, "/r/c/big.bin", digest, ENROLL, str(work)]).returncode
        finally:
            for p in procs:
                p.kill()
                p.wait()


if __name__ == "__main__":
    sys.exit(main())
