//! libodi: ODI's verified downloads, chunk manifests and an embedded relay behind a C ABI.
//!
//! Every function returns an `odi_status` (`ODI_OK` is 0); on failure the calling thread's
//! `odi_last_error_message()` holds one line saying why. No panic crosses the boundary: each
//! entry point runs under `catch_unwind` and a panic becomes `ODI_ERR_PANIC`. Calls block; they
//! run on one tokio runtime started on first use and stopped by `odi_shutdown()`.
#![allow(non_camel_case_types)]

use std::cell::RefCell;
use std::ffi::{CStr, CString, c_char};
use std::net::SocketAddr;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::sync::Mutex;

use odi_client::{GetError, GetOptions, NetError};
use odi_core::manifest::{ChunkManifest, ChunkVerifier, ManifestBuilder, ManifestError};

/// What a call came to.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum odi_status {
    /// Success.
    ODI_OK = 0,
    /// An argument cannot be used (a NULL pointer, a bad URL, a bad chunk size).
    ODI_ERR_INVALID = 1,
    /// A node could not be reached or broke the protocol.
    ODI_ERR_NETWORK = 2,
    /// A server answered an error status.
    ODI_ERR_STATUS = 3,
    /// Bytes do not match their digest; nothing was kept.
    ODI_ERR_INTEGRITY = 4,
    /// A download stopped early; call again with `resume` set.
    ODI_ERR_INCOMPLETE = 5,
    /// A local file could not be read or written.
    ODI_ERR_FILE = 6,
    /// A bug inside libodi (a caught panic); the process may go on.
    ODI_ERR_PANIC = 7,
}

/// What `odi_get` did.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct odi_report {
    /// The bytes' SHA-256 in lowercase hex, NUL-terminated.
    pub sha256: [c_char; 65],
    /// The file's length in bytes.
    pub size: u64,
    /// 1 if the bytes were checked against an expected digest (always, from a directory).
    pub verified: u8,
    /// How many sources the bytes came from.
    pub sources: u32,
    /// Chunks that arrived wrong and were fetched again elsewhere.
    pub chunks_rejected: u64,
}

/// A file's chunk manifest (opaque); free it with `odi_manifest_free`.
pub struct odi_manifest(ChunkManifest);

/// A relay running inside this process (opaque); `odi_relay_stop` stops and frees it.
pub struct odi_relay {
    address: CString,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), NetError>>>,
}

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

static RUNTIME: Mutex<Option<tokio::runtime::Runtime>> = Mutex::new(None);

/// A handle on the library's runtime, started if needed.
fn runtime() -> Result<tokio::runtime::Handle, Failure> {
    let mut slot = RUNTIME.lock().unwrap_or_else(|e| e.into_inner());
    if slot.is_none() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .thread_name("odi")
            .enable_all()
            .build()
            .map_err(|e| Failure(odi_status::ODI_ERR_FILE, format!("cannot start the runtime: {e}")))?;
        *slot = Some(rt);
    }
    Ok(slot.as_ref().map(|rt| rt.handle().clone()).expect("set above"))
}

/// A status other than `ODI_OK` and its one-line message.
struct Failure(odi_status, String);

impl Failure {
    fn invalid(message: impl Into<String>) -> Self {
        Self(odi_status::ODI_ERR_INVALID, message.into())
    }
}

impl From<GetError> for Failure {
    fn from(e: GetError) -> Self {
        let status = match &e {
            GetError::Invalid(_) | GetError::Net(NetError::Config(_)) => odi_status::ODI_ERR_INVALID,
            GetError::Status { .. } | GetError::Net(NetError::Status { .. }) => odi_status::ODI_ERR_STATUS,
            GetError::Mismatch { .. } => odi_status::ODI_ERR_INTEGRITY,
            GetError::Incomplete { .. } => odi_status::ODI_ERR_INCOMPLETE,
            GetError::Io { .. } | GetError::Net(NetError::Io { .. }) => odi_status::ODI_ERR_FILE,
            _ => odi_status::ODI_ERR_NETWORK,
        };
        Self(status, e.to_string())
    }
}

impl From<ManifestError> for Failure {
    fn from(e: ManifestError) -> Self {
        let status = match e {
            ManifestError::ChunkSize(_) | ManifestError::TooLarge(_) | ManifestError::Malformed(_) => odi_status::ODI_ERR_INVALID,
            _ => odi_status::ODI_ERR_INTEGRITY,
        };
        Self(status, e.to_string())
    }
}

fn set_last_error(message: &str) {
    let message = CString::new(message.replace('\0', " ")).unwrap_or_default();
    LAST_ERROR.with(|slot| *slot.borrow_mut() = message);
}

/// Runs `body` with panics caught, recording a failure's message for `odi_last_error_message`.
fn guard(body: impl FnOnce() -> Result<(), Failure>) -> odi_status {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => {
            set_last_error("");
            odi_status::ODI_OK
        }
        Ok(Err(Failure(status, message))) => {
            set_last_error(&message);
            status
        }
        Err(panic) => {
            let what = panic.downcast_ref::<&str>().map(|s| (*s).to_owned()).or_else(|| panic.downcast_ref::<String>().cloned()).unwrap_or_default();
            set_last_error(&format!("internal error in libodi: {what}"));
            odi_status::ODI_ERR_PANIC
        }
    }
}

/// The UTF-8 string at `ptr`, which must not be NULL.
///
/// # Safety
/// `ptr` is NULL or points at a NUL-terminated string.
unsafe fn text<'a>(ptr: *const c_char, what: &str) -> Result<&'a str, Failure> {
    if ptr.is_null() {
        return Err(Failure::invalid(format!("{what} is NULL")));
    }
    // SAFETY: the caller passes a NUL-terminated string.
    unsafe { CStr::from_ptr(ptr) }.to_str().map_err(|_| Failure::invalid(format!("{what} is not UTF-8")))
}

fn read_file(path: &std::path::Path, mut each: impl FnMut(&[u8]) -> Result<(), Failure>) -> Result<(), Failure> {
    use std::io::Read as _;
    let file_error = |what: &str, e: std::io::Error| Failure(odi_status::ODI_ERR_FILE, format!("cannot {what} {}: {e}", path.display()));
    let mut file = std::fs::File::open(path).map_err(|e| file_error("open", e))?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match file.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => each(&buf[..n])?,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(file_error("read", e)),
        }
    }
}

/// The message of this thread's last failed call (empty after a success). The string stays
/// valid until this thread's next libodi call; do not free it.
#[unsafe(no_mangle)]
pub extern "C" fn odi_last_error_message() -> *const c_char {
    LAST_ERROR.with(|slot| slot.borrow().as_ptr())
}

/// Downloads `url` to `path`, verified: from every source at once when `url` is an ODI
/// directory, bad chunks fetched again elsewhere. The bytes reach `path` only once they match.
/// `resume` non-zero continues `path.part`. `out` may be NULL.
///
/// # Safety
/// `url` and `path` are NUL-terminated strings; `out` is NULL or points at an `odi_report`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn odi_get(url: *const c_char, path: *const c_char, resume: i32, out: *mut odi_report) -> odi_status {
    guard(|| {
        // SAFETY: the caller's contract.
        let (url, path) = unsafe { (text(url, "url")?, text(path, "path")?) };
        let options = GetOptions { resume: resume != 0, ..GetOptions::default() };
        let report = runtime()?.block_on(odi_client::get(url, std::path::Path::new(path), &options))?;
        if !out.is_null() {
            let mut sha256 = [0 as c_char; 65];
            for (slot, b) in sha256.iter_mut().zip(report.digest.to_hex().bytes()) {
                *slot = b as c_char;
            }
            let chunks_rejected = report.transfer.as_ref().map_or(0, |t| t.chunks_rejected);
            let report = odi_report { sha256, size: report.bytes, verified: u8::from(report.verified), sources: report.sources as u32, chunks_rejected };
            // SAFETY: `out` points at an `odi_report` (the caller's contract).
            unsafe { out.write(report) };
        }
        Ok(())
    })
}

/// The manifest of the file at `path` in chunks of `chunk_size` bytes, into `*out` (free it
/// with `odi_manifest_free`).
///
/// # Safety
/// `path` is a NUL-terminated string; `out` points at a writable pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn odi_manifest_of_file(path: *const c_char, chunk_size: u32, out: *mut *mut odi_manifest) -> odi_status {
    guard(|| {
        if out.is_null() {
            return Err(Failure::invalid("out is NULL"));
        }
        // SAFETY: the caller's contract.
        let path = PathBuf::from(unsafe { text(path, "path")? });
        let mut builder = ManifestBuilder::new(chunk_size)?;
        read_file(&path, |data| Ok(builder.update(data)?))?;
        let manifest = Box::into_raw(Box::new(odi_manifest(builder.finish())));
        // SAFETY: `out` is writable (the caller's contract).
        unsafe { out.write(manifest) };
        Ok(())
    })
}

/// Checks the file at `path` against `manifest`, chunk by chunk: `ODI_ERR_INTEGRITY` names the
/// first bad chunk (or the wrong length) in the message.
///
/// # Safety
/// `manifest` comes from `odi_manifest_of_file` and is not freed; `path` is NUL-terminated.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn odi_verify_file(manifest: *const odi_manifest, path: *const c_char) -> odi_status {
    guard(|| {
        // SAFETY: the caller's contract.
        let Some(manifest) = (unsafe { manifest.as_ref() }) else { return Err(Failure::invalid("manifest is NULL")) };
        // SAFETY: the caller's contract.
        let path = PathBuf::from(unsafe { text(path, "path")? });
        let mut verifier = ChunkVerifier::new(&manifest.0);
        read_file(&path, |data| Ok(verifier.update(data)?))?;
        Ok(verifier.finish()?)
    })
}

/// The manifest's whole-file SHA-256 as 64 hex digits and a NUL, into `out` (65 bytes).
///
/// # Safety
/// `manifest` is live; `out` points at 65 writable bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn odi_manifest_sha256(manifest: *const odi_manifest, out: *mut c_char) -> odi_status {
    guard(|| {
        // SAFETY: the caller's contract.
        let Some(manifest) = (unsafe { manifest.as_ref() }) else { return Err(Failure::invalid("manifest is NULL")) };
        if out.is_null() {
            return Err(Failure::invalid("out is NULL"));
        }
        let hex = CString::new(manifest.0.digest().to_hex()).expect("hex has no NUL");
        // SAFETY: `out` holds 65 bytes; the hex and its NUL are 65.
        unsafe { std::ptr::copy_nonoverlapping(hex.as_ptr(), out, 65) };
        Ok(())
    })
}

/// The file's length in bytes (0 for a NULL manifest).
///
/// # Safety
/// `manifest` is NULL or live.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn odi_manifest_size(manifest: *const odi_manifest) -> u64 {
    // SAFETY: the caller's contract.
    unsafe { manifest.as_ref() }.map_or(0, |m| m.0.total_len())
}

/// How many chunks the manifest lists (0 for a NULL manifest).
///
/// # Safety
/// `manifest` is NULL or live.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn odi_manifest_chunk_count(manifest: *const odi_manifest) -> u64 {
    // SAFETY: the caller's contract.
    unsafe { manifest.as_ref() }.map_or(0, |m| m.0.chunk_count())
}

/// Frees a manifest; NULL is ignored.
///
/// # Safety
/// `manifest` is NULL or came from `odi_manifest_of_file` and is freed once.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn odi_manifest_free(manifest: *mut odi_manifest) {
    if !manifest.is_null() {
        // SAFETY: the caller's contract: it came from Box::into_raw and is freed once.
        let _ = catch_unwind(AssertUnwindSafe(|| drop(unsafe { Box::from_raw(manifest) })));
    }
}

/// Opens the relay in `data_dir`, enrolls it with `directory` using `enroll_token` and serves
/// on `listen` (`127.0.0.1:0` picks a free port; the relay's public URL is `http://` the bound
/// address), into `*out`. `disk_budget` is in bytes.
///
/// # Safety
/// The strings are NUL-terminated; `out` points at a writable pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn odi_relay_start(
    data_dir: *const c_char,
    directory: *const c_char,
    enroll_token: *const c_char,
    listen: *const c_char,
    disk_budget: u64,
    out: *mut *mut odi_relay,
) -> odi_status {
    guard(|| {
        if out.is_null() {
            return Err(Failure::invalid("out is NULL"));
        }
        // SAFETY: the caller's contract.
        let (data_dir, directory, token, listen) =
            unsafe { (text(data_dir, "data_dir")?, text(directory, "directory")?, text(enroll_token, "enroll_token")?, text(listen, "listen")?) };
        let listen: SocketAddr = listen.parse().map_err(|e| Failure::invalid(format!("listen address {listen:?}: {e}")))?;
        let rt = runtime()?;
        let relay = rt.clone().block_on(async move {
            let network = |e: std::io::Error| Failure(odi_status::ODI_ERR_NETWORK, format!("cannot listen on {listen}: {e}"));
            let tcp = tokio::net::TcpListener::bind(listen).await.map_err(network)?;
            let address = tcp.local_addr().map_err(network)?;
            let options = odi_net::relay::RelayOptions {
                data_dir: PathBuf::from(data_dir),
                directories: vec![directory.to_owned()],
                public_url: format!("http://{address}"),
                disk_budget,
                bandwidth: 0,
                catalogs: Vec::new(),
                tags: Vec::new(),
                enroll_token: token.to_owned(),
                max_fetches: 4,
                scrub_rate: odi_net::relay::DEFAULT_SCRUB_RATE,
                directory_keys: Vec::new(),
                local_trees: Vec::new(),
            };
            let server = odi_net::relay::RelayServer::open(options).await.map_err(|e| {
                let status = match e {
                    NetError::Config(_) => odi_status::ODI_ERR_INVALID,
                    NetError::Io { .. } | NetError::Storage(_) => odi_status::ODI_ERR_FILE,
                    _ => odi_status::ODI_ERR_NETWORK,
                };
                Failure(status, format!("cannot open the relay in {data_dir}: {e}"))
            })?;
            let (tx, rx) = tokio::sync::oneshot::channel();
            let task = rt.spawn(server.run(tcp, async move {
                let _ = rx.await;
            }));
            Ok::<_, Failure>(odi_relay { address: CString::new(address.to_string()).expect("an address has no NUL"), shutdown: Some(tx), task: Some(task) })
        })?;
        // SAFETY: `out` is writable (the caller's contract).
        unsafe { out.write(Box::into_raw(Box::new(relay))) };
        Ok(())
    })
}

/// `host:port` the relay listens on; valid until `odi_relay_stop`.
///
/// # Safety
/// `relay` is NULL or live.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn odi_relay_address(relay: *const odi_relay) -> *const c_char {
    // SAFETY: the caller's contract.
    unsafe { relay.as_ref() }.map_or(std::ptr::null(), |r| r.address.as_ptr())
}

/// Stops the relay, waits until it has shut down (its data directory is then free) and frees
/// it. Reports an error the relay had stopped with; NULL is `ODI_ERR_INVALID`.
///
/// # Safety
/// `relay` came from `odi_relay_start` and is stopped once.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn odi_relay_stop(relay: *mut odi_relay) -> odi_status {
    guard(|| {
        if relay.is_null() {
            return Err(Failure::invalid("relay is NULL"));
        }
        // SAFETY: the caller's contract: it came from Box::into_raw and is stopped once.
        let mut relay = unsafe { Box::from_raw(relay) };
        if let Some(tx) = relay.shutdown.take() {
            let _ = tx.send(());
        }
        let Some(task) = relay.task.take() else { return Ok(()) };
        match runtime()?.block_on(task) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(Failure(odi_status::ODI_ERR_NETWORK, format!("the relay stopped: {e}"))),
            Err(e) => Err(Failure(odi_status::ODI_ERR_PANIC, format!("the relay failed: {e}"))),
        }
    })
}

/// Stops the library's runtime and its threads (stop every relay first). A later call starts
/// a new one. Call it before exit for a clean leak check.
#[unsafe(no_mangle)]
pub extern "C" fn odi_shutdown() {
    let _ = catch_unwind(|| {
        let rt = RUNTIME.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(rt) = rt {
            rt.shutdown_timeout(std::time::Duration::from_secs(5));
        }
    });
    LAST_ERROR.with(|slot| *slot.borrow_mut() = CString::default());
}
