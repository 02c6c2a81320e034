"""The `odi` module against a real loopback network: a directory and two relays started from the
`odi` binary (ODI_BIN), and a third relay embedded in this process with `odi.Relay`."""

import hashlib
import json
import os
import shutil
import socket
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import pytest

import odi

ADMIN = "a5e1c0de" * 8
ENROLL = "e1e1c0de" * 8
MIB = 1 << 20


def odi_bin() -> str:
    path = os.environ.get("ODI_BIN")
    if not path or not os.access(path, os.X_OK):
        pytest.fail(f"set ODI_BIN to the built odi binary (target/debug/odi); got {path!r}")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def noise(size: int, seed: int) -> bytes:
    out = bytearray()
    block = seed.to_bytes(8, "little")
    while len(out) < size:
        block = hashlib.sha256(block).digest()
        out += block
    return bytes(out[:size])


def wait_for(secs: float, what: str, check) -> None:
    deadline = time.monotonic() + secs
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception:
            pass
        time.sleep(0.1)
    pytest.fail(f"timed out after {secs}s waiting for {what}")


def answers(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=2) as r:
        return r.status == 200


def cli(*args: str) -> str:
    env = dict(os.environ, ODI_ADMIN_TOKEN=ADMIN)
    env.pop("ODI_DIRECTORY", None)
    out = subprocess.run([odi_bin(), *args], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, f"odi {args} failed: {out.stderr}"
    return out.stdout


def spawn(*args: str) -> subprocess.Popen:
    env = dict(os.environ, ODI_ADMIN_TOKEN=ADMIN, ODI_ENROLL_TOKEN=ENROLL, ODI_LOG="warn")
    return subprocess.Popen([odi_bin(), *args], env=env, stdout=subprocess.DEVNULL)


def blob_path(data: Path, hex_digest: str) -> Path:
    return data / "blobs" / "blobs" / "sha256" / hex_digest[:2] / hex_digest


def rot(path: Path, offset: int) -> None:
    """Inverts 16 bytes at `offset`, as bit rot (or a hand) would."""
    with open(path, "r+b") as f:
        f.seek(offset)
        old = f.read(16)
        f.seek(offset)
        f.write(bytes(b ^ 0xFF for b in old))


class Network:
    def __init__(self, root: Path):
        self.root = root
        self.procs: list[subprocess.Popen] = []
        port = free_port()
        self.directory = f"http://127.0.0.1:{port}"
        self.procs.append(
            spawn("directory", "--listen", f"127.0.0.1:{port}", "--data", str(root / "dir"),
                  "--heartbeat-interval", "300ms", "--lease", "1500ms", "--probation", "0s")
        )
        wait_for(20, "the directory to answer", lambda: answers(f"{self.directory}/healthz"))
        cli("catalog", "create", "c", "--directory", self.directory, "--replicas", "3")
        self.relays: list[tuple[Path, str]] = []
        for i in range(2):
            port = free_port()
            data = root / f"r{i}"
            url = f"http://127.0.0.1:{port}"
            self.procs.append(
                spawn("relay", "--listen", f"127.0.0.1:{port}", "--data", str(data), "--directory", self.directory,
                      "--public-url", url, "--disk-budget", "1GiB", "--scrub-rate", "0")
            )
            self.relays.append((data, url))
        self.embedded = odi.Relay(root / "embedded", self.directory, ENROLL, scrub_rate=0)
        self.relays.append((root / "embedded", self.embedded.public_url))

    def ready(self) -> int:
        relays = json.loads(cli("relays", "--directory", self.directory, "--json"))
        return sum(1 for r in relays if r["status"] == "ready")

    def close(self) -> None:
        self.embedded.stop()
        for p in self.procs:
            p.kill()
            p.wait()


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    root = tmp_path_factory.mktemp("net")
    network = Network(root)
    try:
        files = root / "files"
        files.mkdir()
        (files / "big.bin").write_bytes(noise(5 * MIB + 4321, 1))
        (files / "small.txt").write_bytes(noise(20_000, 2))
        client = odi.Client(network.directory, ADMIN)
        network.published = {}
        for name in ["big.bin", "small.txt"]:
            network.published[name] = client.publish("c", name, files / name)
        network.files = files
        wait_for(60, "three ready relays", lambda: network.ready() == 3)
        for name, published in network.published.items():
            for data, _ in network.relays:
                wait_for(30, f"{data.name} to hold {name}", lambda: blob_path(data, published["sha256"]).is_file())
        yield network
    finally:
        network.close()


def test_publish_reports_what_the_directory_recorded(net):
    expected = hashlib.sha256((net.files / "big.bin").read_bytes()).hexdigest()
    published = net.published["big.bin"]
    assert published["sha256"] == expected
    assert published["size"] == 5 * MIB + 4321
    assert published["catalog"] == "c" and published["path"] == "big.bin"
    assert published["created"] is True


def test_get_through_the_directory_gets_correct_bytes_though_a_relay_rots(net, tmp_path):
    expected = (net.files / "big.bin").read_bytes()
    digest = hashlib.sha256(expected).hexdigest()
    rotten_data, rotten_url = net.relays[0]
    rot(blob_path(rotten_data, digest), 2 * MIB + 4321)

    # Straight from the rotten relay: it cuts the transfer, and nothing lands at the path.
    direct = tmp_path / "direct.bin"
    with pytest.raises(odi.OdiError):
        odi.get(f"{rotten_url}/r/c/big.bin", direct, sha256=digest)
    assert not direct.exists()

    # Through the directory, as users do: every download is the right bytes.
    for i in range(5):
        out = tmp_path / f"big-{i}.bin"
        report = odi.get(f"{net.directory}/r/c/big.bin", out)
        assert out.read_bytes() == expected, f"download {i} has wrong bytes"
        assert report.sha256 == digest and report.size == len(expected) and report.verified
        assert report.path == out


def test_progress_reaches_the_total_and_the_gil_is_free_meanwhile(net, tmp_path):
    seen: list[tuple[int, int | None]] = []
    ticks = 0
    done = threading.Event()
    result: dict[str, object] = {}

    def download():
        try:
            result["report"] = odi.get(f"{net.directory}/r/c/big.bin", tmp_path / "p.bin",
                                       progress=lambda d, t, s: seen.append((d, t)))
        except Exception as e:  # surfaced below
            result["error"] = e
        finally:
            done.set()

    worker = threading.Thread(target=download)
    worker.start()
    while not done.is_set():
        ticks += 1
        time.sleep(0.001)
    worker.join()
    assert "error" not in result, result.get("error")
    size = 5 * MIB + 4321
    assert seen and seen[-1] == (size, size), seen[-3:]
    assert all(a[0] <= b[0] for a, b in zip(seen, seen[1:])), "progress never goes back"
    assert ticks > 1, "the main thread ran while the download did"


def test_a_raising_progress_callback_fails_the_call(net, tmp_path):
    def boom(done, total, source):
        raise RuntimeError("stop here")

    with pytest.raises(RuntimeError, match="stop here"):
        odi.get(f"{net.directory}/r/c/small.txt", tmp_path / "s.txt", progress=boom)


def test_errors_are_odi_exceptions_with_one_line_messages(net, tmp_path):
    with pytest.raises(odi.StatusError) as e:
        odi.get(f"{net.directory}/r/c/no-such-file", tmp_path / "x")
    assert e.value.status == 404 and "\n" not in str(e.value)

    # An expected digest the directory's manifest contradicts: refused before any byte moves.
    wrong = "00" * 32
    with pytest.raises(odi.InvalidError, match="expected digest"):
        odi.get(f"{net.directory}/r/c/small.txt", tmp_path / "y", sha256=wrong)
    assert not (tmp_path / "y").exists()

    with pytest.raises(odi.InvalidError):
        odi.get(f"{net.directory}/r/c/small.txt", tmp_path / "z", sha256="not-hex")

    with pytest.raises(odi.NetworkError):
        odi.get(f"http://127.0.0.1:{free_port()}/r/c/small.txt", tmp_path / "w")

    # An empty body: the directory refuses before reading any, and closes; with bytes still to
    # send, the client may meet the closed socket before it reads the refusal.
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    with pytest.raises(odi.StatusError) as e:
        odi.Client(net.directory, "wrong-token").publish("c", "other.bin", empty)
    assert e.value.status in (401, 403)

    with pytest.raises(odi.FileError):
        odi.Client(net.directory, ADMIN).publish("c", "other.bin", tmp_path / "missing")

    with pytest.raises(odi.InvalidError):
        odi.Client("ftp://example", ADMIN)


def test_manifest_of_a_file_verifies_it_and_names_a_bad_chunk(tmp_path):
    data = noise(3 * 65536 + 100, 3)
    f = tmp_path / "m.bin"
    f.write_bytes(data)
    m = odi.Manifest.of_file(f, 65536)
    assert m.sha256 == hashlib.sha256(data).hexdigest()
    assert m.size == len(data) and m.chunk_size == 65536 and len(m) == 4
    assert m.chunks[1] == hashlib.sha256(data[65536:2 * 65536]).hexdigest()
    assert odi.Manifest.from_json(m.to_json()) == m
    m.verify_file(f)

    rot(f, 2 * 65536 + 7)
    with pytest.raises(odi.IntegrityError, match="chunk 2"):
        m.verify_file(f)
    f.write_bytes(data[:-1])
    with pytest.raises(odi.IntegrityError):
        m.verify_file(f)

    with pytest.raises(odi.InvalidError):
        odi.Manifest.of_file(f, 100)
    with pytest.raises(odi.FileError):
        odi.Manifest.of_file(tmp_path / "missing")
    with pytest.raises(odi.InvalidError):
        odi.Manifest.from_json('{"total_len": 5, "chunk_size": 65536, "digest": "x", "chunks": []}')


def test_an_embedded_relay_serves_the_mirror_tree_it_runs_beside(net, tmp_path):
    tree = tmp_path / "mirror"
    (tree / "pool").mkdir(parents=True)
    payload = noise(3 * MIB + 5, 7)
    (tree / "pool" / "a.deb").write_bytes(payload)
    cli("catalog", "create", "m", "--directory", net.directory, "--replicas", "8")
    published = odi.Client(net.directory, ADMIN).publish("m", "pool/a.deb", tree / "pool" / "a.deb")
    data = tmp_path / "beside"
    with odi.Relay(data, net.directory, ENROLL, catalogs=["m"], scrub_rate=0, local_trees={"m": tree}) as relay:
        held = blob_path(data, published["sha256"])
        wait_for(30, "the relay to hold the artifact", held.is_file)
        assert held.stat().st_ino == (tree / "pool" / "a.deb").stat().st_ino, "linked from the tree, not downloaded"
        with urllib.request.urlopen(f"{relay.public_url}/r/m/pool/a.deb", timeout=10) as r:
            assert r.read() == payload
    with pytest.raises(odi.InvalidError, match="not a directory"):
        odi.Relay(tmp_path / "bad-tree", net.directory, ENROLL, local_trees={"m": tmp_path / "absent"})


def test_an_embedded_relay_stops_and_frees_its_port_and_data_dir(net, tmp_path):
    data = tmp_path / "r"
    relay = odi.Relay(data, net.directory, ENROLL, scrub_rate=0)
    host, port = relay.address.rsplit(":", 1)
    assert relay.running and relay.id
    wait_for(20, "the embedded relay to answer", lambda: answers(f"{relay.public_url}/healthz"))
    relay.stop()
    assert not relay.running
    relay.stop()  # a second stop does nothing
    with pytest.raises(OSError):
        socket.create_connection((host, int(port)), timeout=1).close()
    # The data directory is free again: a new relay opens it.
    with odi.Relay(data, net.directory, ENROLL, scrub_rate=0) as again:
        assert again.id == relay.id, "the same data directory is the same node"
    with pytest.raises(odi.InvalidError):
        odi.Relay(tmp_path / "bad", "not-a-url", ENROLL)
