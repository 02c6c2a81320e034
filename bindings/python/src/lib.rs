//! The `odi` Python module: verified downloads (`odi.get`), chunk manifests, publishing to a
//! directory and a relay embedded in the calling process.
//!
//! Every call that waits on the network or the disk runs on one tokio runtime shared by the
//! module, with the GIL released, so other Python threads run meanwhile. ODI errors become
//! `odi.OdiError` subclasses whose message is the one line `odi` itself would print.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;
use futures_util::StreamExt as _;
use http_body_util::BodyExt as _;
use odi_client::admin::{AdminClient, AdminError};
use odi_client::{GetError, GetOptions, Progress};
use odi_core::Digest;
use odi_core::manifest::{ChunkManifest, ChunkVerifier, DEFAULT_CHUNK_SIZE, ManifestBuilder, ManifestError};
use pyo3::exceptions::PyException;
use pyo3::prelude::*;
use pyo3::types::PyDict;
use tokio::io::AsyncReadExt as _;

pyo3::create_exception!(odi, OdiError, PyException, "Any failure of an ODI call; the message is one line.");
pyo3::create_exception!(odi, InvalidError, OdiError, "An argument (a URL, a path, a size) cannot be used.");
pyo3::create_exception!(odi, NetworkError, OdiError, "A node could not be reached or broke the protocol.");
pyo3::create_exception!(odi, StatusError, OdiError, "A server answered an error status; `.status` holds it.");
pyo3::create_exception!(odi, IntegrityError, OdiError, "Bytes do not match their digest; nothing was kept.");
pyo3::create_exception!(odi, IncompleteError, OdiError, "A download stopped early; call again with resume=True.");
pyo3::create_exception!(odi, FileError, OdiError, "A local file could not be read or written.");

/// The allocator of the Rust side of the module (Python's objects keep Python's): the one the `odi`
/// binary uses. A download allocates a 1 MiB buffer per chunk; under glibc's malloc each is
/// mapped and unmapped again, which made `odi.get` 0.69x as fast as `odi get` on the same file.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The module's runtime: started on first use, shared by every call and embedded relay.
fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread().thread_name("odi").enable_all().build().expect("cannot start the odi runtime (threads or epoll)")
    })
}

/// A `StatusError` carrying the HTTP status as `.status`.
fn status_error(py: Python<'_>, status: u16, message: String) -> PyErr {
    let err = StatusError::new_err(message);
    let _ = err.value(py).setattr("status", status);
    err
}

fn get_error(py: Python<'_>, e: GetError) -> PyErr {
    let message = e.to_string();
    match e {
        GetError::Invalid(_) => InvalidError::new_err(message),
        GetError::Status { status, .. } => status_error(py, status.as_u16(), message),
        GetError::Mismatch { .. } => IntegrityError::new_err(message),
        GetError::Incomplete { .. } => IncompleteError::new_err(message),
        GetError::Io { .. } => FileError::new_err(message),
        GetError::Net(odi_client::NetError::Status { status, .. }) => status_error(py, status.as_u16(), message),
        GetError::Net(odi_client::NetError::Config(_)) => InvalidError::new_err(message),
        GetError::Net(odi_client::NetError::Io { .. }) => FileError::new_err(message),
        GetError::Net(_) => NetworkError::new_err(message),
        _ => OdiError::new_err(message),
    }
}

fn admin_error(py: Python<'_>, e: AdminError) -> PyErr {
    let message = e.to_string();
    match e {
        AdminError::Status { status, .. } => status_error(py, status.as_u16(), message),
        AdminError::Unreachable { .. } | AdminError::Protocol(_) => NetworkError::new_err(message),
        AdminError::Request(_) => InvalidError::new_err(message),
        _ => OdiError::new_err(message),
    }
}

fn manifest_error(e: ManifestError) -> PyErr {
    match e {
        ManifestError::ChunkSize(_) | ManifestError::TooLarge(_) | ManifestError::Malformed(_) => InvalidError::new_err(e.to_string()),
        _ => IntegrityError::new_err(e.to_string()),
    }
}

fn file_error(what: &str, path: &std::path::Path, e: std::io::Error) -> PyErr {
    FileError::new_err(format!("cannot {what} {}: {e}", path.display()))
}

/// What `odi.get` did.
#[pyclass(frozen, get_all, module = "odi")]
struct Report {
    /// Where the file was saved.
    path: PathBuf,
    /// The SHA-256 of the bytes, in hex.
    sha256: String,
    /// The file's length.
    size: u64,
    /// Whether the bytes were checked against an expected digest (always, from a directory).
    verified: bool,
    /// How many sources the bytes came from.
    sources: usize,
    /// Chunks that arrived wrong and were fetched again from another source.
    chunks_rejected: u64,
    /// Chunks kept from an earlier, interrupted attempt.
    chunks_resumed: u64,
}

#[pymethods]
impl Report {
    fn __repr__(&self) -> String {
        format!(
            "Report(path={:?}, sha256='{}', size={}, verified={}, sources={}, chunks_rejected={})",
            self.path.display().to_string(),
            self.sha256,
            self.size,
            if self.verified { "True" } else { "False" },
            self.sources,
            self.chunks_rejected
        )
    }
}

/// Downloads `url` to `path`, verified: from every source at once when `url` is an ODI
/// directory, bad chunks fetched again elsewhere; the bytes reach `path` only once they match.
#[pyfunction]
#[pyo3(signature = (url, path, resume = false, sha256 = None, progress = None))]
fn get(py: Python<'_>, url: &str, path: PathBuf, resume: bool, sha256: Option<&str>, progress: Option<Py<PyAny>>) -> PyResult<Report> {
    let sha256 = sha256.map(|hex| Digest::from_hex(hex).map_err(|e| InvalidError::new_err(format!("sha256 {hex:?}: {e}")))).transpose()?;
    // The callback's first exception, raised once the download ends.
    let raised: Arc<Mutex<Option<PyErr>>> = Arc::default();
    let progress = progress.map(|callback| {
        let raised = raised.clone();
        Arc::new(move |p: &Progress| {
            Python::attach(|py| {
                let mut raised = raised.lock().unwrap_or_else(|e| e.into_inner());
                if raised.is_none()
                    && let Err(e) = callback.call1(py, (p.done, p.total, p.source.as_str()))
                {
                    *raised = Some(e);
                }
            })
        }) as odi_client::fetch::ProgressFn
    });
    let options = GetOptions { resume, sha256, progress, ..GetOptions::default() };
    let result = py.detach(|| runtime().block_on(odi_client::get(url, &path, &options)));
    if let Some(e) = raised.lock().unwrap_or_else(|e| e.into_inner()).take() {
        return Err(e);
    }
    let report = result.map_err(|e| get_error(py, e))?;
    let (rejected, resumed) = report.transfer.as_ref().map_or((0, 0), |t| (t.chunks_rejected, t.chunks_resumed));
    Ok(Report {
        path: report.path,
        sha256: report.digest.to_hex(),
        size: report.bytes,
        verified: report.verified,
        sources: report.sources,
        chunks_rejected: rejected,
        chunks_resumed: resumed,
    })
}

/// A file's chunk manifest: its length, chunk size, whole-file SHA-256 and each chunk's.
#[pyclass(frozen, module = "odi")]
struct Manifest(ChunkManifest);

const READ_BUF: usize = 1 << 20;

#[pymethods]
impl Manifest {
    /// The manifest of the file at `path`, in chunks of `chunk_size` bytes.
    #[staticmethod]
    #[pyo3(signature = (path, chunk_size = DEFAULT_CHUNK_SIZE as u64))]
    fn of_file(py: Python<'_>, path: PathBuf, chunk_size: u64) -> PyResult<Self> {
        let chunk_size = odi_core::manifest::check_chunk_size(chunk_size).map_err(manifest_error)?;
        py.detach(|| {
            let mut builder = ManifestBuilder::new(chunk_size).map_err(manifest_error)?;
            read_chunks(&path, |data| builder.update(data).map_err(manifest_error))?;
            Ok(Self(builder.finish()))
        })
    }

    /// A manifest from its JSON form (as `to_json` writes and directories serve).
    #[staticmethod]
    fn from_json(json: &str) -> PyResult<Self> {
        ChunkManifest::decode(json.as_bytes()).map(Self).map_err(manifest_error)
    }

    /// The JSON form.
    fn to_json(&self) -> PyResult<String> {
        serde_json_string(&self.0)
    }

    /// Checks the file at `path` against this manifest, chunk by chunk; raises
    /// `IntegrityError` naming the first bad chunk (or the wrong length).
    fn verify_file(&self, py: Python<'_>, path: PathBuf) -> PyResult<()> {
        py.detach(|| {
            let mut verifier = ChunkVerifier::new(&self.0);
            read_chunks(&path, |data| verifier.update(data).map_err(manifest_error))?;
            verifier.finish().map_err(manifest_error)
        })
    }

    /// The whole file's SHA-256, in hex.
    #[getter]
    fn sha256(&self) -> String {
        self.0.digest().to_hex()
    }

    /// The file's length in bytes.
    #[getter]
    fn size(&self) -> u64 {
        self.0.total_len()
    }

    #[getter]
    fn chunk_size(&self) -> u32 {
        self.0.chunk_size()
    }

    /// Each chunk's SHA-256, in hex, in order.
    #[getter]
    fn chunks(&self) -> Vec<String> {
        self.0.chunks().iter().map(Digest::to_hex).collect()
    }

    fn __len__(&self) -> usize {
        self.0.chunks().len()
    }

    fn __eq__(&self, other: &Self) -> bool {
        self.0 == other.0
    }

    fn __repr__(&self) -> String {
        format!(
            "Manifest(sha256='{}', size={}, chunk_size={}, chunks={})",
            self.0.digest().to_hex(),
            self.0.total_len(),
            self.0.chunk_size(),
            self.0.chunks().len()
        )
    }
}

fn serde_json_string(manifest: &ChunkManifest) -> PyResult<String> {
    serde_json::to_string(manifest).map_err(|e| OdiError::new_err(e.to_string()))
}

/// Feeds the file at `path` to `each`, a megabyte at a time.
fn read_chunks(path: &std::path::Path, mut each: impl FnMut(&[u8]) -> PyResult<()>) -> PyResult<()> {
    use std::io::Read as _;
    let mut file = std::fs::File::open(path).map_err(|e| file_error("open", path, e))?;
    let mut buf = vec![0u8; READ_BUF];
    loop {
        match file.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => each(&buf[..n])?,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(file_error("read", path, e)),
        }
    }
}

/// An admin client of one directory, with an admin token.
#[pyclass(frozen, module = "odi")]
struct Client(AdminClient);

#[pymethods]
impl Client {
    #[new]
    fn new(directory: &str, token: &str) -> PyResult<Self> {
        if !(directory.starts_with("http://") || directory.starts_with("https://")) {
            return Err(InvalidError::new_err(format!("directory URL {directory:?} must start with http:// or https://")));
        }
        Ok(Self(AdminClient::new(directory, token)))
    }

    /// Publishes the file at `file` as `path` in `catalog` (streamed, not read into memory);
    /// returns what the directory recorded: catalog, path, sha256, size, seq, created.
    #[pyo3(signature = (catalog, path, file, tags = None, media_type = "application/octet-stream"))]
    fn publish<'py>(
        &self,
        py: Python<'py>,
        catalog: &str,
        path: &str,
        file: PathBuf,
        tags: Option<Vec<String>>,
        media_type: &str,
    ) -> PyResult<Bound<'py, PyDict>> {
        let encoded =
            odi_core::path::ArtifactPath::new(path).map_err(|e| InvalidError::new_err(format!("bad artifact path {path:?}: {e}")))?.to_url().into_owned();
        let tags = tags.unwrap_or_default();
        let published = py.detach(|| {
            runtime().block_on(async {
                let f = tokio::fs::File::open(&file).await.map_err(|e| Err(file_error("open", &file, e)))?;
                let stream = futures_util::stream::unfold(f, |mut f| async move {
                    let mut buf = vec![0u8; 256 * 1024];
                    match f.read(&mut buf).await {
                        Ok(0) => None,
                        Ok(n) => {
                            buf.truncate(n);
                            Some((Ok(hyper::body::Frame::data(Bytes::from(buf))), f))
                        }
                        Err(e) => Some((Err(Box::new(e) as odi_client::body::BoxError), f)),
                    }
                });
                let body = http_body_util::StreamBody::new(stream.boxed()).boxed_unsync();
                self.0.publish(catalog, &encoded, &tags, media_type, body).await.map_err(Ok)
            })
        });
        let published = match published {
            Ok(p) => p,
            Err(Ok(e)) => return Err(admin_error(py, e)),
            Err(Err(e)) => return Err(e),
        };
        let out = PyDict::new(py);
        out.set_item("catalog", published.catalog.as_str())?;
        out.set_item("path", published.path.as_str())?;
        out.set_item("sha256", published.digest.to_hex())?;
        out.set_item("size", published.size)?;
        out.set_item("seq", published.seq)?;
        out.set_item("created", published.created)?;
        Ok(out)
    }

    fn __repr__(&self) -> String {
        format!("Client({:?})", self.0.directory())
    }
}

/// An ODI relay running inside this process, on the module's runtime, until `stop()`.
#[pyclass(module = "odi")]
struct Relay {
    address: SocketAddr,
    id: String,
    public_url: String,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), odi_net::NetError>>>,
}

#[pymethods]
impl Relay {
    /// Opens the relay in `data_dir`, enrolls it with `directory` and serves on `listen`
    /// (`127.0.0.1:0` picks a free port; `public_url` is then `http://` that address).
    /// `local_trees` maps a catalog to a tree already holding its artifacts under their paths
    /// (the embedding mirror's own): what it holds with the right bytes is linked in, not
    /// downloaded.
    #[new]
    #[pyo3(signature = (data_dir, directory, enroll_token, listen = "127.0.0.1:0", public_url = None, disk_budget = 1 << 30, catalogs = None, bandwidth = 0, scrub_rate = odi_net::relay::DEFAULT_SCRUB_RATE, local_trees = None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        data_dir: PathBuf,
        directory: &str,
        enroll_token: &str,
        listen: &str,
        public_url: Option<String>,
        disk_budget: u64,
        catalogs: Option<Vec<String>>,
        bandwidth: u64,
        scrub_rate: u64,
        local_trees: Option<std::collections::BTreeMap<String, PathBuf>>,
    ) -> PyResult<Self> {
        let listen: SocketAddr = listen.parse().map_err(|e| InvalidError::new_err(format!("listen address {listen:?}: {e}")))?;
        py.detach(|| {
            runtime().block_on(async {
                let tcp = tokio::net::TcpListener::bind(listen).await.map_err(|e| NetworkError::new_err(format!("cannot listen on {listen}: {e}")))?;
                let address = tcp.local_addr().map_err(|e| NetworkError::new_err(format!("cannot listen on {listen}: {e}")))?;
                let public_url = public_url.unwrap_or_else(|| format!("http://{address}"));
                let options = odi_net::relay::RelayOptions {
                    data_dir: data_dir.clone(),
                    directories: vec![directory.to_owned()],
                    public_url: public_url.clone(),
                    disk_budget,
                    bandwidth,
                    catalogs: catalogs.unwrap_or_default(),
                    tags: Vec::new(),
                    enroll_token: enroll_token.to_owned(),
                    max_fetches: 4,
                    scrub_rate,
                    directory_keys: Vec::new(),
                    local_trees: local_trees.unwrap_or_default().into_iter().map(|(catalog, dir)| odi_net::relay::LocalTree { catalog, dir }).collect(),
                };
                let server = odi_net::relay::RelayServer::open(options).await.map_err(|e| {
                    let message = format!("cannot open the relay in {}: {e}", data_dir.display());
                    match e {
                        odi_net::NetError::Config(_) => InvalidError::new_err(message),
                        odi_net::NetError::Io { .. } | odi_net::NetError::Storage(_) => FileError::new_err(message),
                        _ => NetworkError::new_err(message),
                    }
                })?;
                let id = server.id().to_string();
                let (tx, rx) = tokio::sync::oneshot::channel();
                let task = tokio::spawn(server.run(tcp, async move {
                    let _ = rx.await;
                }));
                Ok(Self { address, id, public_url, shutdown: Some(tx), task: Some(task) })
            })
        })
    }

    /// `host:port` the relay listens on.
    #[getter]
    fn address(&self) -> String {
        self.address.to_string()
    }

    /// The URL the relay enrolled with.
    #[getter]
    fn public_url(&self) -> &str {
        &self.public_url
    }

    /// The relay's node id.
    #[getter]
    fn id(&self) -> &str {
        &self.id
    }

    /// Whether the relay still serves.
    #[getter]
    fn running(&self) -> bool {
        self.task.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// Stops serving and waits until the relay has shut down (its data directory is then free);
    /// raises if it had stopped with an error. A second call does nothing.
    fn stop(&mut self, py: Python<'_>) -> PyResult<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let Some(task) = self.task.take() else { return Ok(()) };
        match py.detach(|| runtime().block_on(task)) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(NetworkError::new_err(format!("the relay stopped: {e}"))),
            Err(e) => Err(OdiError::new_err(format!("the relay failed: {e}"))),
        }
    }

    fn __enter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    #[pyo3(signature = (*_args))]
    fn __exit__(&mut self, py: Python<'_>, _args: &Bound<'_, pyo3::types::PyTuple>) -> PyResult<bool> {
        self.stop(py)?;
        Ok(false)
    }

    fn __repr__(&self) -> String {
        format!("Relay(id='{}', address='{}', running={})", self.id, self.address, if self.running() { "True" } else { "False" })
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        // Dropped without stop(): ask it to shut down; it finishes on the runtime's threads.
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// The `odi` module.
#[pymodule]
fn odi(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add_function(wrap_pyfunction!(get, m)?)?;
    m.add_class::<Report>()?;
    m.add_class::<Manifest>()?;
    m.add_class::<Client>()?;
    m.add_class::<Relay>()?;
    m.add("OdiError", py.get_type::<OdiError>())?;
    m.add("InvalidError", py.get_type::<InvalidError>())?;
    m.add("NetworkError", py.get_type::<NetworkError>())?;
    m.add("StatusError", py.get_type::<StatusError>())?;
    m.add("IntegrityError", py.get_type::<IntegrityError>())?;
    m.add("IncompleteError", py.get_type::<IncompleteError>())?;
    m.add("FileError", py.get_type::<FileError>())?;
    m.add("DEFAULT_CHUNK_SIZE", DEFAULT_CHUNK_SIZE)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
