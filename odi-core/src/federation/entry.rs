//! Federation entries: one signed record per catalog change, identified by `(origin, seq)`.
//!
//! The signature covers [`Entry::signing_bytes`]: the domain tag `odi-fed-entry-v1\n` followed by
//! the entry's canonical JSON. Canonical means the JSON serde writes for the typed value: fields
//! in declaration order, no maps, no floats, arrays in the order the entry holds them. A receiver
//! parses the wire JSON into an [`Entry`] and encodes it again before it verifies, so whitespace
//! and field order on the wire do not matter, and fields this version does not know are neither
//! signed nor kept.

use std::fmt;

use ed25519_dalek::{Signer as _, SigningKey, VerifyingKey};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::catalog::CatalogConfig;
use crate::digest::Digest;
use crate::manifest::ChunkManifest;
use crate::message::NodeId;
use crate::path::{ArtifactPath, CatalogName};
use crate::time::UnixTime;

/// The domain separator in front of every signed entry encoding.
pub const ENTRY_DOMAIN: &[u8] = b"odi-fed-entry-v1\n";
/// Most tags one Put or Tag entry may carry.
pub const MAX_ENTRY_TAGS: usize = 64;
/// Longest tag accepted, in bytes.
pub const MAX_TAG_LEN: usize = 64;
/// Most `supersedes` ids one Put may carry.
pub const MAX_SUPERSEDES: usize = 256;

/// An entry's identity: the directory that made it and its place in that directory's own
/// sequence (dense from 1). Ordered by origin, then seq.
#[derive(Clone, Copy, Debug, Deserialize, Eq, Hash, Ord, PartialEq, PartialOrd, Serialize)]
pub struct EntryId {
    /// The directory that made the entry: its Ed25519 public key.
    pub origin: NodeId,
    /// The entry's place in its origin's sequence, from 1.
    pub seq: u64,
}

impl fmt::Display for EntryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}#{}", &self.origin.to_hex()[..16], self.seq)
    }
}

/// One catalog change, as made on its origin directory.
#[derive(Clone, Debug, Deserialize, Eq, PartialEq, Serialize)]
pub struct Entry {
    /// The directory that made and signed the entry: its Ed25519 public key.
    pub origin: NodeId,
    /// 1 for the origin's first entry, then +1 per entry; never reused.
    pub seq: u64,
    /// The origin's wall clock when it made the entry. Only catalog-create and tag ordering use
    /// it, as a tie-break that every directory computes the same way; bindings never do.
    pub at: UnixTime,
    /// The catalog the entry changes.
    pub catalog: CatalogName,
    /// What it changes.
    pub op: Op,
}

/// What an entry changes.
#[derive(Clone, Debug, Deserialize, Eq, PartialEq, Serialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    /// Creates the catalog (its `name` must be the entry's catalog).
    Catalog(CatalogConfig),
    /// Binds `path` to the bytes `manifest` describes.
    Put {
        /// The path bound.
        path: ArtifactPath,
        /// Chunk hashes, so a receiver verifies the blob chunk by chunk from any source.
        manifest: ChunkManifest,
        /// The artifact's media type, at most 255 bytes.
        media_type: String,
        /// The artifact's own tags: at most `MAX_ENTRY_TAGS`, each 1 to `MAX_TAG_LEN` bytes.
        tags: Vec<String>,
        /// The Put entries for this path the origin had seen and this one replaces.
        supersedes: Vec<EntryId>,
        /// 1 + the largest generation among `supersedes` (1 when it supersedes nothing), as the
        /// origin computed it. Carried in the entry so that every directory ranks candidates the
        /// same way whether or not the superseded entries reached it.
        generation: u64,
    },
    /// Changes the tags of the artifact `(catalog, path, digest)`: `tags := (tags − remove) ∪ add`.
    Tag {
        /// The artifact's path.
        path: ArtifactPath,
        /// The artifact's digest.
        digest: Digest,
        /// Tags to add, after `remove` is taken away.
        add: Vec<String>,
        /// Tags to take away.
        remove: Vec<String>,
    },
    /// Withdraws `path` where it holds `digest`: every Put of `digest` at `path`, past or future.
    ExpungePath {
        /// The path withdrawn.
        path: ArtifactPath,
        /// The digest it is withdrawn for; a Put of another digest there still binds.
        digest: Digest,
    },
    /// Bars `digest` everywhere, in every catalog, forever.
    ExpungeDigest {
        /// The digest barred.
        digest: Digest,
    },
}

/// Why an entry is not acceptable.
#[derive(Clone, Debug, Eq, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum EntryError {
    /// The signature does not verify under the origin's key, or the origin is not an Ed25519
    /// public key.
    #[error("entry {0} has a signature that does not verify under its origin's key")]
    BadSignature(EntryId),
    /// The entry breaks a rule `Entry::check` enforces (sizes, internal consistency).
    #[error("entry {id} is malformed: {why}")]
    Malformed {
        /// The entry.
        id: EntryId,
        /// The rule it breaks.
        why: &'static str,
    },
}

impl Entry {
    /// The entry's `(origin, seq)` identity.
    pub fn id(&self) -> EntryId {
        EntryId { origin: self.origin, seq: self.seq }
    }

    /// The bytes the origin signs: [`ENTRY_DOMAIN`] then the canonical JSON of the entry.
    pub fn signing_bytes(&self) -> Vec<u8> {
        let mut out = ENTRY_DOMAIN.to_vec();
        // Serialising plain structs, strings and integers into a Vec cannot fail.
        serde_json::to_writer(&mut out, self).expect("an entry always serialises");
        out
    }

    /// The digest a Put binds, a Tag or expunge names.
    pub fn digest(&self) -> Option<Digest> {
        match &self.op {
            Op::Catalog(_) => None,
            Op::Put { manifest, .. } => Some(manifest.digest()),
            Op::Tag { digest, .. } | Op::ExpungePath { digest, .. } | Op::ExpungeDigest { digest } => Some(*digest),
        }
    }

    /// The path a Put, Tag or ExpungePath is about.
    pub fn path(&self) -> Option<&ArtifactPath> {
        match &self.op {
            Op::Put { path, .. } | Op::Tag { path, .. } | Op::ExpungePath { path, .. } => Some(path),
            Op::Catalog(_) | Op::ExpungeDigest { .. } => None,
        }
    }

    /// Checks what a signature cannot: sizes and internal consistency.
    pub fn check(&self) -> Result<(), EntryError> {
        let bad = |why| Err(EntryError::Malformed { id: self.id(), why });
        if self.seq == 0 {
            return bad("seq starts at 1");
        }
        let tags_ok = |tags: &[String]| tags.len() <= MAX_ENTRY_TAGS && tags.iter().all(|t| !t.is_empty() && t.len() <= MAX_TAG_LEN);
        match &self.op {
            Op::Catalog(config) if config.name != self.catalog => bad("catalog config names another catalog"),
            Op::Put { tags, supersedes, generation, media_type, .. } => {
                if !tags_ok(tags) {
                    return bad("too many or malformed tags");
                }
                if supersedes.len() > MAX_SUPERSEDES {
                    return bad("supersedes too many entries");
                }
                if *generation == 0 || (supersedes.is_empty() != (*generation == 1)) {
                    return bad("generation is 1 + the largest superseded generation");
                }
                if media_type.len() > 255 {
                    return bad("media type too long");
                }
                Ok(())
            }
            Op::Tag { add, remove, .. } if !tags_ok(add) || !tags_ok(remove) => bad("too many or malformed tags"),
            _ => Ok(()),
        }
    }
}

/// An entry with its origin's Ed25519 signature over [`Entry::signing_bytes`].
#[derive(Clone, Debug, Deserialize, Eq, PartialEq, Serialize)]
pub struct SignedEntry {
    /// The entry signed.
    pub entry: Entry,
    /// The origin's signature over the entry's signing bytes.
    pub sig: Signature,
}

/// An Ed25519 signature, hex on the wire.
#[derive(Clone, Copy, Eq, PartialEq)]
pub struct Signature(pub [u8; 64]);

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sig:{}", &hex::encode(self.0)[..8])
    }
}

impl Serialize for Signature {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(self.0))
    }
}

impl<'de> Deserialize<'de> for Signature {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        let mut out = [0u8; 64];
        hex::decode_to_slice(s.as_bytes(), &mut out).map_err(|_| serde::de::Error::custom("signature must be 128 hex digits"))?;
        Ok(Self(out))
    }
}

impl SignedEntry {
    /// Signs `entry` with `key`. The entry's origin should be `key`'s public key, or the
    /// result will not verify.
    pub fn sign(entry: Entry, key: &SigningKey) -> Self {
        let sig = key.sign(&entry.signing_bytes());
        Self { entry, sig: Signature(sig.to_bytes()) }
    }

    /// The signed entry's `(origin, seq)` identity.
    pub fn id(&self) -> EntryId {
        self.entry.id()
    }

    /// Checks the signature against the entry's origin key (strict Ed25519), then the entry's
    /// own consistency.
    pub fn verify(&self) -> Result<(), EntryError> {
        let id = self.id();
        let key = VerifyingKey::from_bytes(&self.entry.origin.0).map_err(|_| EntryError::BadSignature(id))?;
        key.verify_strict(&self.entry.signing_bytes(), &ed25519_dalek::Signature::from_bytes(&self.sig.0)).map_err(|_| EntryError::BadSignature(id))?;
        self.entry.check()
    }
}

/// The node id of a signing key.
pub fn node_id(key: &SigningKey) -> NodeId {
    NodeId(key.verifying_key().to_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::MIN_CHUNK_SIZE;

    fn key(n: u8) -> SigningKey {
        SigningKey::from_bytes(&[n; 32])
    }

    fn put(origin: &SigningKey, seq: u64) -> Entry {
        Entry {
            origin: node_id(origin),
            seq,
            at: UnixTime(1_800_000_000),
            catalog: CatalogName::new("dist").unwrap(),
            op: Op::Put {
                path: ArtifactPath::new("a/b.tar").unwrap(),
                manifest: ChunkManifest::of(b"hello", MIN_CHUNK_SIZE).unwrap(),
                media_type: "application/x-tar".into(),
                tags: vec!["beta".into()],
                supersedes: vec![],
                generation: 1,
            },
        }
    }

    #[test]
    fn a_signed_entry_round_trips_through_json_and_verifies() {
        let signed = SignedEntry::sign(put(&key(1), 1), &key(1));
        signed.verify().unwrap();
        let wire = serde_json::to_string(&signed).unwrap();
        let back: SignedEntry = serde_json::from_str(&wire).unwrap();
        assert_eq!(back, signed);
        back.verify().unwrap();
        // Reformatted JSON (other whitespace, other field order) still verifies.
        let value: serde_json::Value = serde_json::from_str(&wire).unwrap();
        let pretty = serde_json::to_string_pretty(&value).unwrap();
        serde_json::from_str::<SignedEntry>(&pretty).unwrap().verify().unwrap();
        assert!(signed.entry.signing_bytes().starts_with(ENTRY_DOMAIN));
    }

    #[test]
    fn a_tampered_field_fails_verification() {
        let signed = SignedEntry::sign(put(&key(1), 1), &key(1));
        let mut tampered = signed.clone();
        tampered.entry.seq = 2;
        assert_eq!(tampered.verify(), Err(EntryError::BadSignature(tampered.id())));
        let mut tampered = signed.clone();
        tampered.entry.at = UnixTime(1);
        assert!(tampered.verify().is_err());
        let mut tampered = signed.clone();
        tampered.entry.catalog = CatalogName::new("other").unwrap();
        assert!(tampered.verify().is_err());
        let mut tampered = signed.clone();
        if let Op::Put { tags, .. } = &mut tampered.entry.op {
            tags.push("prod".into());
        }
        assert!(tampered.verify().is_err());
        let mut tampered = signed;
        tampered.sig.0[0] ^= 1;
        assert!(tampered.verify().is_err());
    }

    #[test]
    fn an_entry_signed_by_another_key_fails_verification() {
        // Claims origin 1, signed by 2.
        let forged = SignedEntry::sign(put(&key(1), 1), &key(2));
        assert_eq!(forged.verify(), Err(EntryError::BadSignature(forged.id())));
        // An origin that is not a valid curve point fails too, without panicking.
        let mut entry = put(&key(1), 1);
        entry.origin = NodeId([0xff; 32]);
        assert!(SignedEntry::sign(entry, &key(1)).verify().is_err());
    }

    #[test]
    fn malformed_entries_are_refused_even_when_signed() {
        let mut entry = put(&key(1), 1);
        if let Op::Put { generation, .. } = &mut entry.op {
            *generation = 5;
        }
        assert!(matches!(SignedEntry::sign(entry, &key(1)).verify(), Err(EntryError::Malformed { .. })));
        assert!(matches!(SignedEntry::sign(put(&key(1), 0), &key(1)).verify(), Err(EntryError::Malformed { .. })));
        assert!(serde_json::from_str::<SignedEntry>(r#"{"entry":1,"sig":"00"}"#).is_err());
    }
}
