//! What the registry reads in a pushed manifest (it stores the bytes as they came and never
//! rewrites them): the blobs and manifests it references, its `subject`, its artifact type.

use serde::{Deserialize, Serialize};

use super::{ErrorCode, OCI_INDEX, OciError, parse_digest};
use crate::digest::Digest;

/// A content descriptor, as the image spec defines it (the fields this registry reads or writes).
#[derive(Clone, Debug, Deserialize, Eq, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// `mediaType` of the content.
    pub media_type: String,
    /// `digest` as written; `digest()` checks it.
    pub digest: String,
    /// `size` of the content in bytes.
    pub size: u64,
    /// `urls` the content may also be fetched from; empty when absent.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub urls: Vec<String>,
    /// `artifactType`, for a manifest's descriptor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    /// `annotations`, kept as given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<serde_json::Map<String, serde_json::Value>>,
}

impl Descriptor {
    /// The digest, parsed as `parse_digest` does (`sha256:` only).
    pub fn digest(&self) -> Result<Digest, OciError> {
        parse_digest(&self.digest)
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Wire {
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    artifact_type: Option<String>,
    #[serde(default)]
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Vec<Descriptor>,
    #[serde(default)]
    blobs: Vec<Descriptor>,
    #[serde(default)]
    manifests: Vec<Descriptor>,
    #[serde(default)]
    subject: Option<Descriptor>,
    #[serde(default)]
    annotations: Option<serde_json::Map<String, serde_json::Value>>,
}

/// A parsed manifest or index.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct ManifestInfo {
    /// The media type it is stored and served with.
    pub media_type: String,
    /// `artifactType`, else the config's media type (as the referrers API reports it).
    pub artifact_type: Option<String>,
    /// The config and layers (image manifest) or `blobs` (artifact manifest): blobs that must
    /// be in the repository, unless they carry `urls` (a layer federated from elsewhere).
    pub blobs: Vec<Descriptor>,
    /// The manifests an index names.
    pub manifests: Vec<Descriptor>,
    /// The digest of the manifest its `subject` names: what it is a referrer of.
    pub subject: Option<Digest>,
    /// The manifest's own `annotations`, carried into its referrer descriptor.
    pub annotations: Option<serde_json::Map<String, serde_json::Value>>,
}

impl ManifestInfo {
    /// Parses pushed bytes. `content_type` is the request's; when the manifest names its own
    /// `mediaType`, the two must agree.
    pub fn parse(bytes: &[u8], content_type: Option<&str>) -> Result<Self, OciError> {
        let wire: Wire = serde_json::from_slice(bytes)
            .map_err(|e| OciError::new(ErrorCode::ManifestInvalid, format!("the manifest is not valid JSON of the image spec: {e}")))?;
        let content_type = content_type.map(|c| c.split(';').next().unwrap_or(c).trim()).filter(|c| !c.is_empty());
        let media_type = match (content_type, wire.media_type.as_deref()) {
            (Some(header), Some(own)) if header != own => {
                return Err(OciError::new(ErrorCode::ManifestInvalid, format!("Content-Type `{header}` does not match the manifest's mediaType `{own}`")));
            }
            (Some(t), _) | (None, Some(t)) => t.to_owned(),
            (None, None) => return Err(OciError::new(ErrorCode::ManifestInvalid, "the manifest has no mediaType and the request no Content-Type")),
        };
        if media_type.len() > 255 || !media_type.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(OciError::new(ErrorCode::ManifestInvalid, "the media type is not a media type"));
        }
        let subject = wire.subject.as_ref().map(Descriptor::digest).transpose()?;
        let mut blobs: Vec<Descriptor> = wire.config.clone().into_iter().chain(wire.layers).chain(wire.blobs).collect();
        blobs.retain(|d| d.size > 0 || !d.media_type.is_empty());
        for d in blobs.iter().chain(&wire.manifests) {
            d.digest()?;
        }
        let artifact_type = wire.artifact_type.or_else(|| wire.config.map(|c| c.media_type));
        Ok(Self { media_type, artifact_type, blobs, manifests: wire.manifests, subject, annotations: wire.annotations })
    }

    /// The descriptor of this manifest in a referrers index.
    pub fn referrer(&self, digest: &Digest, size: u64) -> Descriptor {
        Descriptor {
            media_type: self.media_type.clone(),
            digest: super::digest_string(digest),
            size,
            urls: Vec::new(),
            artifact_type: self.artifact_type.clone(),
            annotations: self.annotations.clone(),
        }
    }
}

/// The image index the referrers API answers: `manifests` are the referrers' descriptors.
pub fn referrers_index(manifests: &[Descriptor]) -> Vec<u8> {
    let index = serde_json::json!({ "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests });
    // A `json!` value of strings, numbers and maps always serializes.
    serde_json::to_vec(&index).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::super::{OCI_MANIFEST, digest_string};
    use super::*;

    fn manifest(subject: Option<&Digest>) -> Vec<u8> {
        let config = Digest::of(b"{}");
        let layer = Digest::of(b"layer");
        let mut m = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": "application/vnd.example.sbom",
            "config": { "mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest_string(&config), "size": 2 },
            "layers": [
                { "mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": digest_string(&layer), "size": 5 },
                { "mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": digest_string(&layer), "size": 5, "urls": ["https://mirror.example/l"] }
            ],
            "annotations": { "org.example": "yes" }
        });
        if let Some(s) = subject {
            m["subject"] = serde_json::json!({ "mediaType": OCI_MANIFEST, "digest": digest_string(s), "size": 10 });
        }
        serde_json::to_vec(&m).unwrap()
    }

    #[test]
    fn a_manifest_names_its_blobs_subject_and_type() {
        let subject = Digest::of(b"subject");
        let info = ManifestInfo::parse(&manifest(Some(&subject)), Some(OCI_MANIFEST)).unwrap();
        assert_eq!(info.media_type, OCI_MANIFEST);
        assert_eq!(info.subject, Some(subject));
        assert_eq!(info.blobs.len(), 3);
        assert_eq!(info.blobs[2].urls, ["https://mirror.example/l"]);
        assert_eq!(info.artifact_type.as_deref(), Some("application/vnd.example.sbom"));
        let d = Digest::of(b"x");
        let r = info.referrer(&d, 99);
        assert_eq!((r.digest, r.size, r.media_type.as_str()), (digest_string(&d), 99, OCI_MANIFEST));
        let index: serde_json::Value = serde_json::from_slice(&referrers_index(&[info.referrer(&d, 99)])).unwrap();
        assert_eq!(index["mediaType"], OCI_INDEX);
        assert_eq!(index["manifests"][0]["artifactType"], "application/vnd.example.sbom");
        assert_eq!(index["manifests"][0]["annotations"]["org.example"], "yes");
    }

    #[test]
    fn media_types_must_agree_and_json_must_parse() {
        let m = manifest(None);
        assert_eq!(ManifestInfo::parse(&m, Some("application/vnd.oci.image.index.v1+json")).unwrap_err().code, ErrorCode::ManifestInvalid);
        assert_eq!(ManifestInfo::parse(&m, None).unwrap().media_type, OCI_MANIFEST);
        assert_eq!(ManifestInfo::parse(&m, Some(&format!("{OCI_MANIFEST}; charset=utf-8"))).unwrap().media_type, OCI_MANIFEST);
        assert_eq!(ManifestInfo::parse(b"{not json", Some(OCI_MANIFEST)).unwrap_err().code, ErrorCode::ManifestInvalid);
        assert_eq!(ManifestInfo::parse(br#"{"schemaVersion":2}"#, None).unwrap_err().code, ErrorCode::ManifestInvalid);
        let bad_digest = br#"{"mediaType":"x/y","layers":[{"mediaType":"a/b","digest":"sha256:nope","size":1}]}"#;
        assert_eq!(ManifestInfo::parse(bad_digest, None).unwrap_err().code, ErrorCode::DigestInvalid);
    }
}
