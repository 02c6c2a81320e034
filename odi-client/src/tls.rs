//! The client side of TLS: one crypto provider, and the trust every client of the process
//! uses (the system roots plus CA files added with [`trust_ca_file`]).

use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

use rustls::crypto::CryptoProvider;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject as _;

use crate::NetError;

/// The one crypto provider every config is built with (never a process default, so no other
/// crate's choice can change it).
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: std::sync::OnceLock<Arc<CryptoProvider>> = std::sync::OnceLock::new();
    PROVIDER.get_or_init(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider())).clone()
}

/// Reads every certificate in a PEM file (a CA bundle).
pub fn read_ca_file(path: &Path) -> Result<Vec<CertificateDer<'static>>, NetError> {
    let pem = std::fs::read(path).map_err(|e| NetError::Config(format!("cannot read the CA file {}: {e}", path.display())))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| NetError::Config(format!("the CA file {} is not valid PEM: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(NetError::Config(format!("the CA file {} holds no CERTIFICATE block", path.display())));
    }
    Ok(certs)
}

struct Trust {
    extra: Vec<CertificateDer<'static>>,
    config: Option<Arc<rustls::ClientConfig>>,
}

static TRUST: Mutex<Trust> = Mutex::new(Trust { extra: Vec::new(), config: None });

/// Adds the CAs in a PEM file to what every client of this process trusts, besides the system
/// roots; clients made from then on use them.
pub fn trust_ca_file(path: &Path) -> Result<(), NetError> {
    let certs = read_ca_file(path)?;
    let mut roots = rustls::RootCertStore::empty();
    let (added, ignored) = roots.add_parsable_certificates(certs.iter().cloned());
    if added == 0 || ignored > 0 {
        return Err(NetError::Config(format!("the CA file {} holds a certificate that is not a usable CA ({ignored} of {})", path.display(), certs.len())));
    }
    let mut trust = TRUST.lock().unwrap_or_else(PoisonError::into_inner);
    trust.extra.extend(certs);
    trust.config = None;
    Ok(())
}

/// The system's root certificates, read once per process (none if the system has none).
fn system_roots() -> &'static [CertificateDer<'static>] {
    static ROOTS: std::sync::OnceLock<Vec<CertificateDer<'static>>> = std::sync::OnceLock::new();
    ROOTS.get_or_init(|| {
        let found = rustls_native_certs::load_native_certs();
        if found.certs.is_empty() {
            tracing::warn!(errors = found.errors.len(), "no system root certificates found; only --ca-file CAs are trusted");
        }
        found.certs
    })
}

/// The client config every client of this process uses: system roots plus [`trust_ca_file`]
/// CAs.
pub fn client_config() -> Arc<rustls::ClientConfig> {
    let mut trust = TRUST.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(config) = &trust.config {
        return config.clone();
    }
    let mut roots = rustls::RootCertStore::empty();
    // A system root that does not parse is skipped rather than failing every client.
    roots.add_parsable_certificates(system_roots().iter().cloned());
    roots.add_parsable_certificates(trust.extra.iter().cloned());
    // Invariant: the aws-lc-rs provider has cipher suites for TLS 1.2 and 1.3.
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(rustls::DEFAULT_VERSIONS)
        .expect("aws-lc-rs supports the default TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    // No ALPN here: the connector sets it (HTTP/1.1).
    let config = Arc::new(config);
    trust.config = Some(config.clone());
    config
}
