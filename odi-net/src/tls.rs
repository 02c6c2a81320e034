//! TLS for listeners and clients, with rustls on the aws-lc-rs provider.
//!
//! **Servers** ([`ServerTls`]) read a PEM certificate chain and private key, offer HTTP/2 and
//! HTTP/1.1 by ALPN, and pick up renewed files without a restart: the certificate resolver looks
//! at the files' modification time, size and inode at most once per [`RELOAD_CHECK`], and when
//! they changed it loads them again. New handshakes get the new certificate; connections
//! already open keep theirs. A pair that does not load (half written, key not matching the
//! certificate) is logged and ignored, and the one in use stays until a good pair appears.
//!
//! **Clients** ([`client_config`]) trust the system's roots plus every CA file added with
//! [`trust_ca_file`] (the CLI's `--ca-file` / `ODI_CA_FILE`), for the whole process: every
//! client a process makes (a relay's to its directory and peers, the directory's self-tests and
//! audits, `odi get`, admin commands) verifies against the same set.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::NetError;

/// How often, at most, a handshake looks whether the certificate files changed.
pub const RELOAD_CHECK: Duration = Duration::from_secs(1);
/// Time a client gets to complete its TLS handshake before the connection is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The ALPN protocols a listener offers, preferred first.
pub const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];
/// The ALPN protocol of ACME's tls-alpn-01 validation (RFC 8737): a handshake that asks for it
/// gets the challenge certificate, and the connection carries nothing after the handshake.
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

pub use odi_client::tls::{client_config, provider, read_ca_file, trust_ca_file};

/// A listener's TLS: the acceptor of a server config whose certificate follows the files.
#[derive(Clone)]
pub struct ServerTls {
    acceptor: tokio_rustls::TlsAcceptor,
    resolver: Arc<ReloadingCert>,
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTls").field("cert", &self.resolver.cert_path).field("key", &self.resolver.key_path).finish()
    }
}

impl ServerTls {
    /// Loads `cert` (a PEM chain, leaf first) and `key` (PEM PKCS#8, PKCS#1 or SEC1); fails
    /// with a message naming the file and what is wrong with it.
    pub fn from_pem_files(cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Result<Self, NetError> {
        let (cert_path, key_path) = (cert.into(), key.into());
        let current = load_pair(&cert_path, &key_path).map_err(NetError::Config)?;
        Self::build(cert_path, key_path, current, &ALPN)
    }

    /// The TLS of a listener whose certificate an ACME client keeps in `cert` and `key` (see
    /// `crate::acme`): the files when they are there and load, else a self-signed certificate
    /// for `names` until they appear; and the `acme-tls/1` challenges (RFC 8737) set with
    /// [`ServerTls::set_challenge`] answered on the same port.
    pub fn for_acme(cert: impl Into<PathBuf>, key: impl Into<PathBuf>, names: &[String]) -> Result<Self, NetError> {
        let (cert_path, key_path) = (cert.into(), key.into());
        let current = match load_pair(&cert_path, &key_path) {
            Ok(pair) => pair,
            Err(why) => {
                if cert_path.exists() {
                    tracing::warn!(error = %why, "the stored ACME certificate does not load; serving a self-signed one until a new one is issued");
                }
                self_signed(names)?
            }
        };
        let alpn = [ALPN[0], ALPN[1], ACME_TLS_ALPN];
        Self::build(cert_path, key_path, current, &alpn)
    }

    fn build(cert_path: PathBuf, key_path: PathBuf, current: Arc<CertifiedKey>, alpn: &[&[u8]]) -> Result<Self, NetError> {
        let stamp = Stamp::of(&cert_path, &key_path);
        let resolver = Arc::new(ReloadingCert {
            cert_path,
            key_path,
            state: Mutex::new(ReloadState { current, stamp, checked: Instant::now(), refused: None }),
            challenges: Mutex::new(HashMap::new()),
        });
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(rustls::DEFAULT_VERSIONS)
            .map_err(|e| NetError::Config(format!("TLS configuration: {e}")))?
            .with_no_client_auth()
            .with_cert_resolver(resolver.clone());
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(Self { acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)), resolver })
    }

    /// Answers handshakes for `name` that ask for `acme-tls/1` with `key` (a tls-alpn-01
    /// challenge certificate), until [`ServerTls::clear_challenges`].
    pub fn set_challenge(&self, name: &str, key: Arc<CertifiedKey>) {
        self.resolver.challenges.lock().unwrap_or_else(PoisonError::into_inner).insert(name.to_ascii_lowercase(), key);
    }

    pub fn clear_challenges(&self) {
        self.resolver.challenges.lock().unwrap_or_else(PoisonError::into_inner).clear();
    }

    /// The certificate files this listener follows.
    pub fn files(&self) -> (&Path, &Path) {
        (&self.resolver.cert_path, &self.resolver.key_path)
    }

    pub fn acceptor(&self) -> &tokio_rustls::TlsAcceptor {
        &self.acceptor
    }

    /// The end-entity certificate handshakes are given now (DER), looking at the files first.
    pub fn current_certificate(&self) -> CertificateDer<'static> {
        let key = self.resolver.current(true);
        key.cert.first().cloned().unwrap_or_else(|| CertificateDer::from(Vec::new()))
    }
}

/// What identifies one version of the two files; any change means "load again".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp([Option<(SystemTime, u64, u64)>; 2]);

impl Stamp {
    fn of(cert: &Path, key: &Path) -> Self {
        use std::os::unix::fs::MetadataExt as _;
        let one = |p: &Path| std::fs::metadata(p).ok().map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len(), m.ino()));
        Self([one(cert), one(key)])
    }
}

#[derive(Debug)]
struct ReloadState {
    current: Arc<CertifiedKey>,
    /// The files' stamp when `current` was loaded.
    stamp: Stamp,
    checked: Instant,
    /// A stamp whose files did not load: not tried again until the files change once more.
    refused: Option<Stamp>,
}

#[derive(Debug)]
struct ReloadingCert {
    cert_path: PathBuf,
    key_path: PathBuf,
    state: Mutex<ReloadState>,
    /// tls-alpn-01 challenge certificates by lower-case name, while an ACME order is open.
    challenges: Mutex<HashMap<String, Arc<CertifiedKey>>>,
}

impl ReloadingCert {
    fn current(&self, force_check: bool) -> Arc<CertifiedKey> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if force_check || state.checked.elapsed() >= RELOAD_CHECK {
            state.checked = Instant::now();
            let stamp = Stamp::of(&self.cert_path, &self.key_path);
            if stamp != state.stamp && state.refused != Some(stamp) {
                // Small files, read only when they changed: cheap enough for the handshake path.
                match load_pair(&self.cert_path, &self.key_path) {
                    Ok(key) => {
                        tracing::info!(cert = %self.cert_path.display(), "TLS certificate reloaded; new connections get it");
                        state.current = key;
                        state.stamp = stamp;
                        state.refused = None;
                    }
                    Err(why) => {
                        tracing::warn!(error = %why, "TLS certificate files changed but do not load; still serving the previous certificate");
                        state.refused = Some(stamp);
                    }
                }
            }
        }
        state.current.clone()
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        if hello.alpn().is_some_and(|mut protocols| protocols.any(|p| p == ACME_TLS_ALPN)) {
            // A validation handshake: its challenge certificate, or no handshake at all.
            let name = hello.server_name()?.to_ascii_lowercase();
            return self.challenges.lock().unwrap_or_else(PoisonError::into_inner).get(&name).cloned();
        }
        Some(self.current(false))
    }
}

/// Reads and checks a certificate chain and its key.
fn load_pair(cert_path: &Path, key_path: &Path) -> Result<Arc<CertifiedKey>, String> {
    let cert_pem = std::fs::read(cert_path).map_err(|e| format!("cannot read the TLS certificate {}: {e}", cert_path.display()))?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("the TLS certificate {} is not valid PEM: {e}", cert_path.display()))?;
    if chain.is_empty() {
        return Err(format!("the TLS certificate {} holds no CERTIFICATE block", cert_path.display()));
    }
    let key_pem = std::fs::read(key_path).map_err(|e| format!("cannot read the TLS key {}: {e}", key_path.display()))?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| format!("the TLS key {} holds no usable private key: {e}", key_path.display()))?;
    let certified = CertifiedKey::from_der(chain, key, &provider())
        .map_err(|e| format!("the TLS key {} does not fit the certificate {} ({e})", key_path.display(), cert_path.display()))?;
    Ok(Arc::new(certified))
}

/// A self-signed certificate for `names`, served until a real one is there.
fn self_signed(names: &[String]) -> Result<Arc<CertifiedKey>, NetError> {
    let fail = |e: rcgen::Error| NetError::Config(format!("cannot make a placeholder certificate: {e}"));
    let key = rcgen::KeyPair::generate().map_err(fail)?;
    let cert = rcgen::CertificateParams::new(names.to_vec()).map_err(fail)?.self_signed(&key).map_err(fail)?;
    certified(cert.der().clone(), &key)
}

/// `cert` with its `key`, ready to hand to handshakes. Not parsed by the end-entity checks of
/// `CertifiedKey::from_der`: a tls-alpn-01 certificate carries a critical extension that only
/// ACME validators know.
pub fn certified(cert: CertificateDer<'static>, key: &rcgen::KeyPair) -> Result<Arc<CertifiedKey>, NetError> {
    let der = PrivateKeyDer::try_from(key.serialize_der()).map_err(|e| NetError::Config(format!("key: {e}")))?;
    let signing = provider().key_provider.load_private_key(der).map_err(|e| NetError::Config(format!("key: {e}")))?;
    Ok(Arc::new(CertifiedKey::new(vec![cert], signing)))
}

/// The files of a development CA and one server certificate it signed ([`write_dev_ca`]).
#[derive(Clone, Debug)]
pub struct DevCerts {
    /// The CA's certificate: what clients trust (`curl --cacert`, `--ca-file`).
    pub ca: PathBuf,
    /// The server's certificate chain (leaf, then the CA) for `--tls-cert`.
    pub cert: PathBuf,
    /// The server's private key (mode 0600) for `--tls-key`.
    pub key: PathBuf,
}

/// Makes a CA and a server certificate for `names` (DNS names or IP addresses) signed by it,
/// and writes them into `dir` as `ca.pem`, `cert.pem`, `key.pem`; for `odi dev --tls` and
/// tests, never for a public service. The CA's key is not kept.
pub fn write_dev_ca(dir: &Path, names: &[&str]) -> Result<DevCerts, NetError> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose};

    let fail = |e: rcgen::Error| NetError::Config(format!("cannot make the dev certificates: {e}"));
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(fail)?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.distinguished_name.push(DnType::CommonName, "ODI development CA");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let ca_key = KeyPair::generate().map_err(fail)?;
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).map_err(fail)?;

    let mut leaf = CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>()).map_err(fail)?;
    leaf.distinguished_name.push(DnType::CommonName, names.first().copied().unwrap_or("localhost"));
    leaf.is_ca = IsCa::NoCa;
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let leaf_key = KeyPair::generate().map_err(fail)?;
    let leaf_cert = leaf.signed_by(&leaf_key, &ca).map_err(fail)?;

    std::fs::create_dir_all(dir).map_err(|e| NetError::io(format!("cannot create {}", dir.display()), e))?;
    let files = DevCerts { ca: dir.join("ca.pem"), cert: dir.join("cert.pem"), key: dir.join("key.pem") };
    write_file(&files.ca, ca.pem().as_bytes(), 0o644)?;
    write_file(&files.cert, format!("{}{}", leaf_cert.pem(), ca.pem()).as_bytes(), 0o644)?;
    write_file(&files.key, leaf_key.serialize_pem().as_bytes(), 0o600)?;
    Ok(files)
}

/// Writes `bytes` to `path` through a temporary file and a rename, so a reader (a listener
/// reloading its certificate) sees the old file or the new one, never half of one.
pub fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), NetError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;

    let tmp = path.with_extension("tmp");
    let io = |e| NetError::io(format!("cannot write {}", path.display()), e);
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(mode).open(&tmp).map_err(io)?;
    f.write_all(bytes).and_then(|()| f.sync_all()).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}
