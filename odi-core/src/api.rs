//! The admin API's bodies and answers, `/api/v1/...`: one set of types for the directory that
//! serves them and the clients that call it (`odi_client::admin::AdminClient`, `odi`). Views the
//! directory already shows (catalogs, relays, tokens, links, conflicts, hot artifacts) are the
//! [`crate::directory`] types themselves. Field names and shapes are the wire format: a change
//! here is a change of the API.

use serde::{Deserialize, Serialize};

use crate::Digest;
use crate::directory::{CatalogView, ConflictView, ExpungeView, HotView};
use crate::message::NodeId;
use crate::path::{ArtifactPath, CatalogName};

pub use crate::directory::{LinkView, RelayView, TokenView};
pub use crate::webhook::{Delivery, Hook};

/// `POST /api/v1/catalogs`.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CreateCatalog {
    pub name: String,
    #[serde(default)]
    pub replicas: Option<u32>,
    #[serde(default)]
    pub chunk_size: Option<u64>,
    /// Paths may be published again with other bytes (index files); default false.
    #[serde(default)]
    pub mutable: bool,
    /// An autoindex URL to mirror (admins only).
    #[serde(default)]
    pub origin: Option<String>,
    /// Seconds between scheduled syncs of the origin.
    #[serde(default)]
    pub origin_interval: Option<u64>,
}

/// One artifact in a catalog's listing.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct ArtifactView {
    pub path: ArtifactPath,
    pub digest: Digest,
    pub size: u64,
    pub media_type: String,
    /// Unix seconds.
    pub published_at: u64,
    pub tags: Vec<String>,
}

/// `GET /api/v1/catalogs/{name}`.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct CatalogListing {
    pub catalog: CatalogView,
    pub artifacts: Vec<ArtifactView>,
    pub conflicts: Vec<ConflictView>,
}

/// `PUT /api/v1/catalogs/{name}/artifacts/{path}`: 201 when published, 200 when the path held
/// exactly these bytes already (`created: false`).
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct Published {
    pub catalog: CatalogName,
    pub path: ArtifactPath,
    pub digest: Digest,
    pub size: u64,
    /// The catalog's sequence number after the publish.
    pub seq: u64,
    pub created: bool,
}

/// `DELETE /api/v1/catalogs/{name}/artifacts/{path}`.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct PathExpunged {
    pub catalog: CatalogName,
    pub path: ArtifactPath,
    pub digest: Option<Digest>,
    /// The other names that still serve those bytes.
    pub still_named: Vec<String>,
}

/// `DELETE /api/v1/blobs/sha256/{hex}`.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct DigestExpunged {
    pub digest: Digest,
    /// The names that served those bytes.
    pub expunged: Vec<String>,
    /// The bytes were expunged before: nothing changed.
    pub already: bool,
}

/// `POST /api/v1/catalogs/{name}/tags`.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ChangeTags {
    pub path: String,
    #[serde(default)]
    pub add: Vec<String>,
    #[serde(default)]
    pub remove: Vec<String>,
}

/// The answer to [`ChangeTags`]: the artifact's tags now.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct Tagged {
    pub catalog: CatalogName,
    pub path: ArtifactPath,
    pub tags: Vec<String>,
}

/// `POST /api/v1/tokens`: an enrollment token, or with `catalog` a publisher's token.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    pub name: String,
    #[serde(default)]
    pub catalog: Option<CatalogName>,
    #[serde(default)]
    pub single_use: bool,
}

/// The answer to [`CreateToken`]: the token itself, shown this once.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct TokenCreated {
    pub name: String,
    /// `enroll` or `publish`.
    pub role: String,
    pub token: String,
}

/// `DELETE /api/v1/tokens/{name}`.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct TokenRevoked {
    pub name: String,
    pub revoked: bool,
    /// Relays enrolled with it, quarantined now.
    pub quarantined: Vec<NodeId>,
}

/// `POST /api/v1/links`.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CreateLink {
    /// The peer directory's URL.
    pub peer: String,
    /// The peer's link token.
    pub token: String,
    #[serde(default)]
    pub catalogs: Vec<CatalogName>,
    #[serde(default)]
    pub tags: Vec<String>,
}

/// The answer to [`CreateLink`].
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct LinkCreated {
    pub peer: NodeId,
    pub url: String,
    pub catalogs: Vec<CatalogName>,
    pub tags: Vec<String>,
}

/// `DELETE /api/v1/links/{url or id}`.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct LinkRemoved {
    pub peer: NodeId,
    pub url: String,
}

/// `GET /api/v1/stats`.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct Stats {
    pub generation: u64,
    /// Bytes sent to relays through the node API.
    pub node_blob_bytes: u64,
    pub peer_blob_bytes_sent: u64,
    pub peer_blob_bytes_received: u64,
    pub hottest: Vec<HotView>,
    pub expunges_pending: Vec<ExpungeView>,
}

/// `POST /api/v1/catalogs/{name}/sync`: what one pass over the origin did.
#[derive(Clone, Debug, Default, Deserialize, Eq, PartialEq, Serialize)]
pub struct SyncReport {
    pub published: Vec<String>,
    pub unchanged: usize,
    /// Files not published because their bytes do not match a checksum file, or the catalog
    /// refused them (a changed file in an immutable catalog), with the reason.
    pub refused: Vec<(String, String)>,
    /// Files that could not be fetched or published this time (tried again next sync).
    pub failed: Vec<(String, String)>,
}

/// `POST /api/v1/webhooks`.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AddHook {
    pub url: String,
    /// Event kinds it takes; empty: all.
    #[serde(default)]
    pub events: Vec<String>,
}

/// The answer to [`AddHook`]: the hook and its secret, shown this once.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct HookAdded {
    #[serde(flatten)]
    pub hook: Hook,
    /// What the receiver checks `ODI-Signature` with.
    pub secret: String,
}

/// `DELETE /api/v1/webhooks/{id}`.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct HookRemoved {
    pub id: String,
    pub url: String,
}
