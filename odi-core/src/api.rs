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
    /// The new catalog's name (checked as a `CatalogName`).
    pub name: String,
    /// Relays that should hold each artifact, 1 to 64; `None`: `catalog::DEFAULT_REPLICAS`.
    #[serde(default)]
    pub replicas: Option<u32>,
    /// Bytes per chunk of every artifact published here; `None`: `manifest::DEFAULT_CHUNK_SIZE`.
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
    /// Where the artifact sits in its catalog.
    pub path: ArtifactPath,
    /// The artifact's bytes.
    pub digest: Digest,
    /// Its length in bytes.
    pub size: u64,
    /// The `Content-Type` it was published with (`application/octet-stream` when none).
    pub media_type: String,
    /// Unix seconds.
    pub published_at: u64,
    /// Its tags, which relays and links may filter on.
    pub tags: Vec<String>,
}

/// `GET /api/v1/catalogs/{name}`.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct CatalogListing {
    /// The catalog's settings and totals.
    pub catalog: CatalogView,
    /// Every artifact it names.
    pub artifacts: Vec<ArtifactView>,
    /// The conflicts recorded for this catalog.
    pub conflicts: Vec<ConflictView>,
}

/// `PUT /api/v1/catalogs/{name}/artifacts/{path}`: 201 when published, 200 when the path held
/// exactly these bytes already (`created: false`).
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct Published {
    /// The catalog published to.
    pub catalog: CatalogName,
    /// The path published.
    pub path: ArtifactPath,
    /// The bytes now at `path`.
    pub digest: Digest,
    /// Their length in bytes.
    pub size: u64,
    /// The catalog's sequence number after the publish.
    pub seq: u64,
    /// False when the path already held exactly these bytes: nothing changed.
    pub created: bool,
}

/// `DELETE /api/v1/catalogs/{name}/artifacts/{path}`.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct PathExpunged {
    /// The catalog the path was in.
    pub catalog: CatalogName,
    /// The path expunged.
    pub path: ArtifactPath,
    /// The bytes the path held.
    pub digest: Option<Digest>,
    /// The other names that still serve those bytes.
    pub still_named: Vec<String>,
}

/// `DELETE /api/v1/blobs/sha256/{hex}`.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct DigestExpunged {
    /// The bytes barred from the directory.
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
    /// The artifact's path in the catalog.
    pub path: String,
    /// Tags to give it.
    #[serde(default)]
    pub add: Vec<String>,
    /// Tags to take off it. A change that adds and removes nothing is refused.
    #[serde(default)]
    pub remove: Vec<String>,
}

/// The answer to [`ChangeTags`]: the artifact's tags now.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct Tagged {
    /// The artifact's catalog.
    pub catalog: CatalogName,
    /// The artifact's path in it.
    pub path: ArtifactPath,
    /// Every tag it carries after the change.
    pub tags: Vec<String>,
}

/// `POST /api/v1/tokens`: an enrollment token, or with `catalog` a publisher's token.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    /// What the token is called in listings and in `DELETE /api/v1/tokens/{name}`.
    pub name: String,
    /// Makes it a publisher's token for this catalog; `None`: an enrollment token.
    #[serde(default)]
    pub catalog: Option<CatalogName>,
    /// An enrollment token spent by the first relay that enrolls with it (refused with
    /// `catalog`).
    #[serde(default)]
    pub single_use: bool,
}

/// The answer to [`CreateToken`]: the token itself, shown this once.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct TokenCreated {
    /// The name it was created under.
    pub name: String,
    /// `enroll` or `publish`.
    pub role: String,
    /// The secret itself; the directory keeps only a keyed hash of it.
    pub token: String,
}

/// `DELETE /api/v1/tokens/{name}`.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct TokenRevoked {
    /// The token revoked.
    pub name: String,
    /// Always true: the answer is sent once the revocation is durable.
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
    /// Catalogs that cross the link; empty: all.
    #[serde(default)]
    pub catalogs: Vec<CatalogName>,
    /// Only artifacts carrying one of these tags cross; empty: all.
    #[serde(default)]
    pub tags: Vec<String>,
}

/// The answer to [`CreateLink`].
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct LinkCreated {
    /// The peer's key, as it answered the handshake: pinned for the link.
    pub peer: NodeId,
    /// The peer's base URL, without trailing slashes.
    pub url: String,
    /// Catalogs that cross the link; empty: all.
    pub catalogs: Vec<CatalogName>,
    /// Only artifacts carrying one of these tags cross; empty: all.
    pub tags: Vec<String>,
}

/// `DELETE /api/v1/links/{url or id}`.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct LinkRemoved {
    /// The peer's key.
    pub peer: NodeId,
    /// The peer's base URL.
    pub url: String,
}

/// `GET /api/v1/stats`.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct Stats {
    /// The placement generation, which numbers every change relays must learn of.
    pub generation: u64,
    /// Bytes sent to relays through the node API.
    pub node_blob_bytes: u64,
    /// Blob bytes served to linked directories since start.
    pub peer_blob_bytes_sent: u64,
    /// Blob bytes fetched (verified) from linked directories since start.
    pub peer_blob_bytes_received: u64,
    /// The most requested artifacts now, hottest first (at most 10).
    pub hottest: Vec<HotView>,
    /// Expunged blobs some relay has not yet confirmed deleting.
    pub expunges_pending: Vec<ExpungeView>,
}

/// `POST /api/v1/catalogs/{name}/sync`: what one pass over the origin did.
#[derive(Clone, Debug, Default, Deserialize, Eq, PartialEq, Serialize)]
pub struct SyncReport {
    /// Paths published this pass.
    pub published: Vec<String>,
    /// Files the catalog already held with the same bytes (by checksum, or by size when the
    /// origin gives no checksum).
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
    /// Where deliveries are POSTed: an `http://` or `https://` URL with a host.
    pub url: String,
    /// Event kinds it takes; empty: all.
    #[serde(default)]
    pub events: Vec<String>,
}

/// The answer to [`AddHook`]: the hook and its secret, shown this once.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct HookAdded {
    /// The hook as listings show it; its fields sit beside `secret` in the JSON object.
    #[serde(flatten)]
    pub hook: Hook,
    /// What the receiver checks `ODI-Signature` with.
    pub secret: String,
}

/// `DELETE /api/v1/webhooks/{id}`.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct HookRemoved {
    /// The removed hook's id.
    pub id: String,
    /// The URL it delivered to.
    pub url: String,
}
