"""ODI: verified multi-source downloads, chunk manifests, publishing and an embedded relay."""

from os import PathLike
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence

__version__: str
DEFAULT_CHUNK_SIZE: int

class OdiError(Exception):
    """Any failure of an ODI call; the message is one line."""

class InvalidError(OdiError):
    """An argument (a URL, a path, a size) cannot be used."""

class NetworkError(OdiError):
    """A node could not be reached or broke the protocol."""

class StatusError(OdiError):
    """A server answered an error status."""

    status: int

class IntegrityError(OdiError):
    """Bytes do not match their digest; nothing was kept."""

class IncompleteError(OdiError):
    """A download stopped early; call again with resume=True."""

class FileError(OdiError):
    """A local file could not be read or written."""

class Report:
    """What `get` did."""

    @property
    def path(self) -> Path: ...
    @property
    def sha256(self) -> str: ...
    @property
    def size(self) -> int: ...
    @property
    def verified(self) -> bool: ...
    @property
    def sources(self) -> int: ...
    @property
    def chunks_rejected(self) -> int: ...
    @property
    def chunks_resumed(self) -> int: ...

def get(
    url: str,
    path: str | PathLike[str],
    resume: bool = False,
    sha256: Optional[str] = None,
    progress: Optional[Callable[[int, Optional[int], str], object]] = None,
) -> Report:
    """Downloads `url` to `path`, verified; `progress(done, total, source)` is called as bytes
    are verified. The GIL is released while the download runs."""

class Manifest:
    """A file's chunk manifest: its length, chunk size, whole-file SHA-256 and each chunk's."""

    @staticmethod
    def of_file(path: str | PathLike[str], chunk_size: int = ...) -> Manifest: ...
    @staticmethod
    def from_json(json: str) -> Manifest: ...
    def to_json(self) -> str: ...
    def verify_file(self, path: str | PathLike[str]) -> None:
        """Raises `IntegrityError` naming the first bad chunk or the wrong length."""
    @property
    def sha256(self) -> str: ...
    @property
    def size(self) -> int: ...
    @property
    def chunk_size(self) -> int: ...
    @property
    def chunks(self) -> list[str]: ...
    def __len__(self) -> int: ...

class Client:
    """An admin client of one directory."""

    def __init__(self, directory: str, token: str) -> None: ...
    def publish(
        self,
        catalog: str,
        path: str,
        file: str | PathLike[str],
        tags: Optional[Sequence[str]] = None,
        media_type: str = "application/octet-stream",
    ) -> dict[str, object]:
        """Publishes `file` as `path` in `catalog`; returns catalog, path, sha256, size, seq,
        created."""

class Relay:
    """An ODI relay running inside this process until `stop()` (or the end of a `with`)."""

    def __init__(
        self,
        data_dir: str | PathLike[str],
        directory: str,
        enroll_token: str,
        listen: str = "127.0.0.1:0",
        public_url: Optional[str] = None,
        disk_budget: int = 1 << 30,
        catalogs: Optional[Sequence[str]] = None,
        bandwidth: int = 0,
        scrub_rate: int = ...,
        local_trees: Optional[Mapping[str, str | PathLike[str]]] = None,
    ) -> None: ...
    @property
    def address(self) -> str: ...
    @property
    def public_url(self) -> str: ...
    @property
    def id(self) -> str: ...
    @property
    def running(self) -> bool: ...
    def stop(self) -> None: ...
    def __enter__(self) -> Relay: ...
    def __exit__(self, *args: object) -> bool: ...
