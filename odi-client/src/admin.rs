//! [`AdminClient`]: a typed method per endpoint of a directory's admin API (`/api/v1/...`),
//! with the bodies and answers of [`odi_core::api`].

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode, header};
use odi_core::Digest;
use odi_core::api::{
    AddHook, CatalogListing, ChangeTags, CreateCatalog, CreateLink, CreateToken, Delivery, DigestExpunged, Hook, HookAdded, HookRemoved, LinkCreated,
    LinkRemoved, LinkView, PathExpunged, Published, RelayView, Stats, SyncReport, Tagged, TokenCreated, TokenRevoked, TokenView,
};
use odi_core::directory::{CatalogView, ConflictView};
use odi_core::message::NodeId;
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::body::{Body, empty, full};
use crate::{HttpClient, NetError};

/// How long an ordinary admin call may take.
pub const ADMIN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long an upload or an origin sync may take: as long as the bytes take.
pub const LONG_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// Why an admin call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdminError {
    /// The directory refused the request: its status and one-line reason.
    #[error("{status}: {reason}")]
    Status {
        /// The HTTP status.
        status: StatusCode,
        /// The directory's one-line reason.
        reason: String,
    },
    /// The directory could not be reached.
    #[error("cannot reach {url}: {reason}")]
    Unreachable {
        /// The URL tried.
        url: String,
        /// Why it failed.
        reason: String,
    },
    /// The directory answered something that is not the API's answer.
    #[error("{0}")]
    Protocol(String),
    /// The request could not be made (a bad directory URL).
    #[error("{0}")]
    Request(String),
}

impl AdminError {
    /// The HTTP status, when the directory answered with an error.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            Self::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

impl From<NetError> for AdminError {
    fn from(e: NetError) -> Self {
        match e {
            NetError::Status { status, reason } => Self::Status { status, reason },
            NetError::Unreachable { url, reason } => Self::Unreachable { url, reason },
            NetError::Config(m) => Self::Request(m),
            other => Self::Protocol(other.to_string()),
        }
    }
}

/// What `POST /api/v1/relays/{id}/{action}` does.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub enum RelayAction {
    /// Send it no more clients or work.
    Drain,
    /// Undo a drain.
    Undrain,
    /// Lift a quarantine.
    Readmit,
}

impl RelayAction {
    /// The action as the URL names it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Drain => "drain",
            Self::Undrain => "undrain",
            Self::Readmit => "readmit",
        }
    }
}

/// A directory's admin API, called with one token (the admin token, or a publisher's token for
/// the calls its catalog allows).
#[derive(Clone)]
pub struct AdminClient {
    directory: String,
    token: String,
    client: HttpClient,
}

/// One path segment (a name given by the user) for a URL.
fn segment(s: &str) -> String {
    utf8_percent_encode(s, NON_ALPHANUMERIC).to_string()
}

impl AdminClient {
    /// A client for the directory at `directory` (its base URL) holding `token`.
    pub fn new(directory: &str, token: impl Into<String>) -> Self {
        Self::with_client(directory, token, HttpClient::new())
    }

    /// [`AdminClient::new`] over a given HTTP client (its TLS roots, address policy).
    pub fn with_client(directory: &str, token: impl Into<String>, client: HttpClient) -> Self {
        Self { directory: directory.trim_end_matches('/').to_owned(), token: token.into(), client }
    }

    /// The directory's base URL, without a trailing `/`.
    pub fn directory(&self) -> &str {
        &self.directory
    }

    /// Sends `body` to `/api/v1/{path}` and reads the JSON answer as `T`.
    pub async fn call<T: DeserializeOwned>(&self, method: Method, path: &str, body: Body, content_type: &str, timeout: Duration) -> Result<T, AdminError> {
        let url = format!("{}/api/v1/{path}", self.directory);
        let req = Request::builder()
            .method(method)
            .uri(&url)
            .header(header::AUTHORIZATION, format!("Bearer {}", self.token))
            .header(header::CONTENT_TYPE, content_type)
            .body(body)
            .map_err(|e| AdminError::Request(format!("`{url}` is not a valid URL: {e}")))?;
        let resp = self.client.send(req, timeout).await?;
        Ok(crate::client::read_json(resp).await?)
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, AdminError> {
        self.call(Method::GET, path, empty(), "application/json", ADMIN_TIMEOUT).await
    }

    async fn send<T: DeserializeOwned>(&self, method: Method, path: &str, body: &impl Serialize) -> Result<T, AdminError> {
        let body = serde_json::to_vec(body).map_err(|e| AdminError::Request(e.to_string()))?;
        self.call(method, path, full(Bytes::from(body)), "application/json", ADMIN_TIMEOUT).await
    }

    async fn bare<T: DeserializeOwned>(&self, method: Method, path: &str) -> Result<T, AdminError> {
        self.call(method, path, empty(), "application/json", ADMIN_TIMEOUT).await
    }

    /// `GET /api/v1/catalogs`.
    pub async fn catalogs(&self) -> Result<Vec<CatalogView>, AdminError> {
        self.get("catalogs").await
    }

    /// `POST /api/v1/catalogs`.
    pub async fn create_catalog(&self, create: &CreateCatalog) -> Result<CatalogView, AdminError> {
        self.send(Method::POST, "catalogs", create).await
    }

    /// `GET /api/v1/catalogs/{name}`: the catalog, its artifacts and conflicts.
    pub async fn catalog(&self, name: &str) -> Result<CatalogListing, AdminError> {
        self.get(&format!("catalogs/{}", segment(name))).await
    }

    /// `PUT /api/v1/catalogs/{catalog}/artifacts/{path}?tag=...`: `path` already percent-encoded
    /// segment by segment (`ArtifactPath::to_url`), `body` the file's bytes.
    pub async fn publish(&self, catalog: &str, encoded_path: &str, tags: &[String], media_type: &str, body: Body) -> Result<Published, AdminError> {
        let query: Vec<String> = tags.iter().map(|t| format!("tag={}", segment(t))).collect();
        let query = if query.is_empty() { String::new() } else { format!("?{}", query.join("&")) };
        let path = format!("catalogs/{}/artifacts/{encoded_path}{query}", segment(catalog));
        match self.call(Method::PUT, &path, body, media_type, LONG_TIMEOUT).await {
            // A directory that refuses the upload (a wrong token, no such catalog) answers before
            // it has read the body and closes the connection; the client, still sending, may see
            // only the reset. Asking for the catalog without a body then gets the refusal itself.
            Err(lost @ (AdminError::Unreachable { .. } | AdminError::Protocol(_))) => match self.catalog(catalog).await {
                Err(refused @ AdminError::Status { .. }) => Err(refused),
                _ => Err(lost),
            },
            answer => answer,
        }
    }

    /// `DELETE /api/v1/catalogs/{catalog}/artifacts/{path}` (`path` percent-encoded).
    pub async fn expunge_path(&self, catalog: &str, encoded_path: &str) -> Result<PathExpunged, AdminError> {
        self.bare(Method::DELETE, &format!("catalogs/{}/artifacts/{encoded_path}", segment(catalog))).await
    }

    /// `DELETE /api/v1/blobs/sha256/{hex}`: the bytes barred under every name.
    pub async fn expunge_digest(&self, digest: &Digest) -> Result<DigestExpunged, AdminError> {
        self.bare(Method::DELETE, &format!("blobs/sha256/{}", digest.to_hex())).await
    }

    /// `POST /api/v1/catalogs/{name}/sync`: one pass over the catalog's origin, however long.
    pub async fn sync(&self, catalog: &str) -> Result<SyncReport, AdminError> {
        self.call(Method::POST, &format!("catalogs/{}/sync", segment(catalog)), empty(), "application/json", LONG_TIMEOUT).await
    }

    /// `POST /api/v1/catalogs/{name}/tags`.
    pub async fn change_tags(&self, catalog: &str, change: &ChangeTags) -> Result<Tagged, AdminError> {
        self.send(Method::POST, &format!("catalogs/{}/tags", segment(catalog)), change).await
    }

    /// `GET /api/v1/catalogs/{name}/conflicts`.
    pub async fn conflicts(&self, catalog: &str) -> Result<Vec<ConflictView>, AdminError> {
        self.get(&format!("catalogs/{}/conflicts", segment(catalog))).await
    }

    /// `GET /api/v1/relays`.
    pub async fn relays(&self) -> Result<Vec<RelayView>, AdminError> {
        self.get("relays").await
    }

    /// `POST /api/v1/relays/{id}/{drain|undrain|readmit}`: the relay as it is now.
    pub async fn relay_action(&self, id: &NodeId, action: RelayAction) -> Result<Option<RelayView>, AdminError> {
        self.bare(Method::POST, &format!("relays/{id}/{}", action.as_str())).await
    }

    /// `GET /api/v1/stats`.
    pub async fn stats(&self) -> Result<Stats, AdminError> {
        self.get("stats").await
    }

    /// `GET /api/v1/tokens`.
    pub async fn tokens(&self) -> Result<Vec<TokenView>, AdminError> {
        self.get("tokens").await
    }

    /// `POST /api/v1/tokens`: the token, shown this once.
    pub async fn create_token(&self, create: &CreateToken) -> Result<TokenCreated, AdminError> {
        self.send(Method::POST, "tokens", create).await
    }

    /// `DELETE /api/v1/tokens/{name}`.
    pub async fn revoke_token(&self, name: &str) -> Result<TokenRevoked, AdminError> {
        self.bare(Method::DELETE, &format!("tokens/{}", segment(name))).await
    }

    /// `GET /api/v1/links`.
    pub async fn links(&self) -> Result<Vec<LinkView>, AdminError> {
        self.get("links").await
    }

    /// `POST /api/v1/links`: the handshake with the peer, then the link.
    pub async fn create_link(&self, create: &CreateLink) -> Result<LinkCreated, AdminError> {
        self.send(Method::POST, "links", create).await
    }

    /// `DELETE /api/v1/links/{url or id}`.
    pub async fn remove_link(&self, which: &str) -> Result<LinkRemoved, AdminError> {
        self.bare(Method::DELETE, &format!("links/{}", segment(which))).await
    }

    /// `GET /api/v1/webhooks`.
    pub async fn webhooks(&self) -> Result<Vec<Hook>, AdminError> {
        self.get("webhooks").await
    }

    /// `POST /api/v1/webhooks`: the hook and its secret, shown this once.
    pub async fn add_webhook(&self, add: &AddHook) -> Result<HookAdded, AdminError> {
        self.send(Method::POST, "webhooks", add).await
    }

    /// `DELETE /api/v1/webhooks/{id}`.
    pub async fn remove_webhook(&self, id: &str) -> Result<HookRemoved, AdminError> {
        self.bare(Method::DELETE, &format!("webhooks/{}", segment(id))).await
    }

    /// `GET /api/v1/webhooks/{id}/deliveries?limit=N`: newest first.
    pub async fn deliveries(&self, id: &str, limit: u32) -> Result<Vec<Delivery>, AdminError> {
        self.get(&format!("webhooks/{}/deliveries?limit={limit}", segment(id))).await
    }

    /// `GET /api/v1/audit?limit=N[&before=ID]`: admin changes, newest first, a page at a time.
    pub async fn audit(&self, limit: u32, before: Option<u64>) -> Result<odi_core::audit::AuditPage, AdminError> {
        let before = before.map(|b| format!("&before={b}")).unwrap_or_default();
        self.get(&format!("audit?limit={limit}{before}")).await
    }
}
