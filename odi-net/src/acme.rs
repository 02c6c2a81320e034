//! Certificates from an ACME CA (RFC 8555: Let's Encrypt, ZeroSSL, a company's own step-ca, or
//! pebble in tests) for a directory's or relay's listener, by the tls-alpn-01 challenge
//! (RFC 8737) answered on that listener itself: no port 80, no DNS API, nothing else to run.
//!
//! [`run`] keeps `{data}/acme/`: `account.json` (the account's key, 0600), `cert.pem` (the chain)
//! and `key.pem` (0600). At start it orders a certificate when there is none (the listener
//! serves a self-signed placeholder meanwhile, [`ServerTls::for_acme`]), and afterwards when less
//! than a third of the certificate's lifetime is left. A new pair is written through a rename
//! and picked up by the listener's reload, so renewal needs no restart; a failed order is logged
//! in one line, the certificate in use keeps serving, and the order is tried again with backoff.
//! Requests to the CA go through [`HttpClient`]: system roots plus `--ca-file`, as every client.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::{Duration, SystemTime};

use http::Request;
use http_body_util::BodyExt as _;
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, BodyWrapper, BytesResponse, ChallengeType, Identifier, NewAccount, NewOrder, OrderStatus, RetryPolicy,
};
use rustls_pki_types::CertificateDer;

use crate::NetError;
use crate::client::HttpClient;
use crate::tls::{ServerTls, write_file};

/// Longest wait for one request to the CA.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// First wait after a failed order; doubled after each failure up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(5);
const MAX_BACKOFF: Duration = Duration::from_secs(3600);

/// What to ask the CA for, and where to keep what it gives.
#[derive(Clone, Debug)]
pub struct AcmeOptions {
    /// The CA's ACME directory URL, e.g. `https://acme-v02.api.letsencrypt.org/directory`.
    pub directory_url: String,
    /// The names the certificate is for: DNS names that resolve to this listener.
    pub domains: Vec<String>,
    /// A contact address the CA may write to about the account (expiry, incidents).
    pub email: Option<String>,
    /// `{data}/acme`.
    pub dir: PathBuf,
}

impl AcmeOptions {
    pub fn cert_path(&self) -> PathBuf {
        self.dir.join("cert.pem")
    }

    pub fn key_path(&self) -> PathBuf {
        self.dir.join("key.pem")
    }

    fn account_path(&self) -> PathBuf {
        self.dir.join("account.json")
    }

    /// Checks the options before anything listens: names present and plain DNS names.
    pub fn check(&self) -> Result<(), NetError> {
        if !self.directory_url.starts_with("https://") {
            return Err(NetError::Config(format!("--acme-directory must be an https:// URL, not `{}`", self.directory_url)));
        }
        if self.domains.is_empty() {
            return Err(NetError::Config("ACME needs a name: give --acme-domain, or a --public-url with a host name".into()));
        }
        for d in &self.domains {
            let plain = !d.is_empty()
                && d.len() <= 253
                && d.split('.').all(|l| !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
            if !plain || d.parse::<std::net::IpAddr>().is_ok() {
                return Err(NetError::Config(format!("--acme-domain `{d}` is not a DNS name (an ACME certificate needs one)")));
            }
        }
        Ok(())
    }

    /// The listener's TLS for these options (the stored certificate, or a placeholder).
    pub fn server_tls(&self) -> Result<ServerTls, NetError> {
        self.check()?;
        std::fs::create_dir_all(&self.dir).map_err(|e| NetError::io(format!("cannot create {}", self.dir.display()), e))?;
        ServerTls::for_acme(self.cert_path(), self.key_path(), &self.domains)
    }
}

/// Keeps the listener's certificate issued and renewed, for as long as the future runs.
pub async fn run(options: AcmeOptions, tls: ServerTls) {
    let mut backoff = FIRST_BACKOFF;
    loop {
        let wait = renewal_wait(&options.cert_path(), SystemTime::now());
        if !wait.is_zero() {
            tracing::info!(in_secs = wait.as_secs(), "ACME certificate valid; next renewal scheduled");
            tokio::time::sleep(wait).await;
        }
        match obtain(&options, &tls).await {
            Ok(()) => {
                backoff = FIRST_BACKOFF;
                tracing::info!(domains = ?options.domains, "ACME certificate issued; new connections get it");
            }
            Err(why) => {
                tracing::warn!(error = %why, retry_in_secs = backoff.as_secs(), "ACME order failed; the certificate in use keeps serving");
                tls.clear_challenges();
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// How long until the certificate at `path` is due for renewal: zero when it is missing, does
/// not parse, or has less than a third of its lifetime left.
pub fn renewal_wait(path: &Path, now: SystemTime) -> Duration {
    let Some((not_before, not_after)) = std::fs::read(path).ok().and_then(|pem| validity(&pem)) else {
        return Duration::ZERO;
    };
    let lifetime = not_after.duration_since(not_before).unwrap_or_default();
    let renew_at = not_after - lifetime / 3;
    renew_at.duration_since(now).unwrap_or_default()
}

/// The leaf's notBefore and notAfter.
fn validity(pem: &[u8]) -> Option<(SystemTime, SystemTime)> {
    use rustls_pki_types::pem::PemObject as _;
    let leaf = CertificateDer::pem_slice_iter(pem).next()?.ok()?;
    let (_, cert) = x509_parser::parse_x509_certificate(&leaf).ok()?;
    let at = |t: i64| SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(u64::try_from(t).ok()?));
    Some((at(cert.validity().not_before.timestamp())?, at(cert.validity().not_after.timestamp())?))
}

fn acme_error(what: &str) -> impl FnOnce(instant_acme::Error) -> NetError + '_ {
    move |e| NetError::Config(format!("{what}: {e}"))
}

/// One order, from account to installed certificate.
async fn obtain(options: &AcmeOptions, tls: &ServerTls) -> Result<(), NetError> {
    let account = account(options).await?;
    let identifiers: Vec<Identifier> = options.domains.iter().map(|d| Identifier::Dns(d.clone())).collect();
    let mut order = account.new_order(&NewOrder::new(&identifiers)).await.map_err(acme_error("new order"))?;
    let mut authorizations = order.authorizations();
    while let Some(authz) = authorizations.next().await {
        let mut authz = authz.map_err(acme_error("authorization"))?;
        match authz.status {
            AuthorizationStatus::Valid => continue,
            AuthorizationStatus::Pending => {}
            other => return Err(NetError::Config(format!("authorization is {other:?}"))),
        }
        let mut challenge =
            authz.challenge(ChallengeType::TlsAlpn01).ok_or_else(|| NetError::Config("the CA offers no tls-alpn-01 challenge for this name".into()))?;
        let name = challenge.identifier().to_string();
        let digest = challenge.key_authorization().digest();
        tls.set_challenge(&name, challenge_certificate(&name, digest.as_ref())?);
        challenge.set_ready().await.map_err(acme_error("challenge"))?;
    }
    let retries = RetryPolicy::new().timeout(Duration::from_secs(120));
    let status = order.poll_ready(&retries).await.map_err(acme_error("waiting for validation"))?;
    tls.clear_challenges();
    if status != OrderStatus::Ready {
        let detail = order.state().error.as_ref().map(|p| p.to_string()).unwrap_or_default();
        return Err(NetError::Config(format!("the CA did not validate the order ({status:?}) {detail}")));
    }
    let key_pem = order.finalize().await.map_err(acme_error("finalize"))?;
    let chain_pem = order.poll_certificate(&retries).await.map_err(acme_error("certificate"))?;
    if validity(chain_pem.as_bytes()).is_none() {
        return Err(NetError::Config("the CA sent a certificate that does not parse".into()));
    }
    // The key first: a reload between the two renames sees a pair that does not match, refuses
    // it, and loads the pair once the certificate is there too.
    write_file(&options.key_path(), key_pem.as_bytes(), 0o600)?;
    write_file(&options.cert_path(), chain_pem.as_bytes(), 0o644)?;
    let served = tls.current_certificate();
    if validity(&pem_of(&served)).is_none_or(|(_, after)| Some(after) != validity(chain_pem.as_bytes()).map(|v| v.1)) {
        return Err(NetError::Config(format!("the issued certificate was written to {} but does not load", options.cert_path().display())));
    }
    Ok(())
}

fn pem_of(der: &CertificateDer<'_>) -> Vec<u8> {
    use base64::Engine as _;
    format!("-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n", base64::engine::general_purpose::STANDARD.encode(der)).into_bytes()
}

/// The stored account, or a new one (stored 0600 before it is used).
async fn account(options: &AcmeOptions) -> Result<Account, NetError> {
    let builder = || Account::builder_with_http(Box::new(AcmeHttp(HttpClient::new())));
    let path = options.account_path();
    if let Ok(json) = std::fs::read(&path) {
        let credentials: AccountCredentials =
            serde_json::from_slice(&json).map_err(|e| NetError::Config(format!("{} is not an ACME account: {e}", path.display())))?;
        return builder().from_credentials(credentials).await.map_err(acme_error("ACME account"));
    }
    let contact = options.email.as_ref().map(|e| format!("mailto:{e}"));
    let contacts: Vec<&str> = contact.iter().map(String::as_str).collect();
    let new = NewAccount { contact: &contacts, terms_of_service_agreed: true, only_return_existing: false };
    let (account, credentials) = builder().create(&new, options.directory_url.clone(), None).await.map_err(acme_error("new ACME account"))?;
    let json = serde_json::to_vec(&credentials).map_err(|e| NetError::Config(format!("account: {e}")))?;
    write_file(&path, &json, 0o600)?;
    Ok(account)
}

/// The tls-alpn-01 certificate for `name`: self-signed, the name as its only SAN, and the
/// critical acmeIdentifier extension holding the key authorization's digest.
fn challenge_certificate(name: &str, digest: &[u8]) -> Result<std::sync::Arc<rustls::sign::CertifiedKey>, NetError> {
    let fail = |e: rcgen::Error| NetError::Config(format!("challenge certificate: {e}"));
    let key = rcgen::KeyPair::generate().map_err(fail)?;
    let mut params = rcgen::CertificateParams::new(vec![name.to_owned()]).map_err(fail)?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
    let cert = params.self_signed(&key).map_err(fail)?;
    crate::tls::certified(cert.der().clone(), &key)
}

/// The process's client (its trust, its timeouts) for instant-acme.
struct AcmeHttp(HttpClient);

impl instant_acme::HttpClient for AcmeHttp {
    fn request(&self, req: Request<BodyWrapper<bytes::Bytes>>) -> Pin<Box<dyn Future<Output = Result<BytesResponse, instant_acme::Error>> + Send>> {
        let client = self.0.clone();
        Box::pin(async move {
            let req = req.map(|body| body.map_err(|e| match e {}).boxed_unsync());
            match client.send(req, REQUEST_TIMEOUT).await {
                Ok(resp) => Ok(BytesResponse::from(resp)),
                Err(e) => Err(instant_acme::Error::Other(Box::new(e))),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(domains: &[&str]) -> AcmeOptions {
        AcmeOptions {
            directory_url: "https://ca.example/dir".into(),
            domains: domains.iter().map(|d| (*d).to_owned()).collect(),
            email: None,
            dir: PathBuf::from("/nonexistent"),
        }
    }

    #[test]
    fn names_must_be_dns_names_and_the_ca_https() {
        assert!(options(&["relay.example.org"]).check().is_ok());
        assert!(options(&[]).check().is_err());
        assert!(options(&["127.0.0.1"]).check().is_err());
        assert!(options(&["bad name"]).check().is_err());
        let mut plain = options(&["relay.example.org"]);
        plain.directory_url = "http://ca.example/dir".into();
        assert!(plain.check().is_err());
    }

    #[test]
    fn renewal_is_due_in_the_last_third_of_the_lifetime() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("cert.pem");
        assert_eq!(renewal_wait(&path, SystemTime::now()), Duration::ZERO, "no certificate: order one now");
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["relay.example.org".to_owned()]).unwrap();
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        params.not_before = start.into();
        params.not_after = (start + Duration::from_secs(90 * 86_400)).into();
        std::fs::write(&path, params.self_signed(&key).unwrap().pem()).unwrap();
        assert_eq!(renewal_wait(&path, start), Duration::from_secs(60 * 86_400));
        assert_eq!(renewal_wait(&path, start + Duration::from_secs(61 * 86_400)), Duration::ZERO);
        std::fs::write(&path, "not a certificate").unwrap();
        assert_eq!(renewal_wait(&path, start), Duration::ZERO);
    }
}
