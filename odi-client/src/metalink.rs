//! Metalink 4 (RFC 5854) documents: every source of an artifact plus its whole-file and
//! per-chunk SHA-256, so a client (aria2c, `odi get`) can download from several relays at once
//! and repair a bad piece from another source.

use quick_xml::Reader;
use quick_xml::XmlVersion;
use quick_xml::events::Event;

use odi_core::{ChunkManifest, Digest};

/// The media type of a Metalink 4 document (RFC 5854).
pub const MEDIA_TYPE: &str = "application/metalink4+xml";

/// Renders the document for one file. `urls` are listed in preference order.
pub fn render(name: &str, manifest: &ChunkManifest, urls: &[String]) -> String {
    let mut out = String::with_capacity(512 + manifest.chunks().len() * 80 + urls.len() * 100);
    out.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<metalink xmlns=\"urn:ietf:params:xml:ns:metalink\">\n");
    out.push_str(&format!("  <generator>odi/{}</generator>\n", env!("CARGO_PKG_VERSION")));
    out.push_str(&format!("  <file name=\"{}\">\n", escape(name)));
    out.push_str(&format!("    <size>{}</size>\n", manifest.total_len()));
    out.push_str(&format!("    <hash type=\"sha-256\">{}</hash>\n", manifest.digest().to_hex()));
    if !manifest.chunks().is_empty() {
        out.push_str(&format!("    <pieces length=\"{}\" type=\"sha-256\">\n", manifest.chunk_size()));
        for chunk in manifest.chunks() {
            out.push_str(&format!("      <hash>{}</hash>\n", chunk.to_hex()));
        }
        out.push_str("    </pieces>\n");
    }
    for (i, url) in urls.iter().enumerate() {
        out.push_str(&format!("    <url priority=\"{}\">{}</url>\n", i + 1, escape(url)));
    }
    out.push_str("  </file>\n</metalink>\n");
    out
}

/// The `Content-Disposition` of the document describing `name`: saved, it is `{name}.meta4`
/// (RFC 5854's extension), never the artifact's own name. Non-ASCII names go in `filename*`.
pub fn content_disposition(name: &str) -> String {
    let file = format!("{name}.meta4");
    let ascii: String = file.chars().map(|c| if c.is_ascii_graphic() && c != '"' && c != '\\' || c == ' ' { c } else { '_' }).collect();
    let mut value = format!("attachment; filename=\"{ascii}\"");
    if ascii != file {
        value.push_str("; filename*=UTF-8''");
        value.push_str(&percent_encoding::utf8_percent_encode(&file, percent_encoding::NON_ALPHANUMERIC).to_string());
    }
    value
}

/// Escapes text for an element or an attribute. Tab, line feed and carriage return go as
/// character references: written raw, an XML parser turns them into spaces in an attribute
/// (and `\r\n` into `\n` anywhere), so a name holding one would name another file.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' => out.push_str("&#9;"),
            '\n' => out.push_str("&#10;"),
            '\r' => out.push_str("&#13;"),
            c => out.push(c),
        }
    }
    out
}

/// What `odi get` needs from a metalink: the manifest and the sources in priority order.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct Parsed {
    /// The file name the document gives.
    pub name: String,
    /// The file's chunk manifest (size, chunk size, digests).
    pub manifest: ChunkManifest,
    /// The sources, highest priority first.
    pub urls: Vec<String>,
}

/// Parses the first `<file>` of a metalink document. Refuses documents whose sizes, piece
/// counts or hashes do not add up (the manifest's own validation).
pub fn parse(xml: &str) -> Result<Parsed, String> {
    let mut reader = Reader::from_str(xml);
    let (mut name, mut size, mut digest, mut piece_len) = (None, None, None, None);
    let mut pieces: Vec<Digest> = Vec::new();
    let mut urls: Vec<(u32, String)> = Vec::new();
    let mut path: Vec<String> = Vec::new();
    let mut text = String::new();
    let mut hash_type: Option<String> = None;
    let mut url_priority = u32::MAX;
    let mut files = 0;
    loop {
        match reader.read_event().map_err(|e| format!("malformed metalink: {e}"))? {
            Event::Start(e) => {
                let tag = e.local_name().as_ref().to_owned();
                let attr = |key: &str| -> Option<String> {
                    e.attributes()
                        .flatten()
                        .find(|a| a.key.local_name().as_ref() == key)
                        .and_then(|a| a.normalized_value(XmlVersion::Implicit1_0).ok().map(|v| v.into_owned()))
                };
                match tag.as_str() {
                    "file" => {
                        files += 1;
                        if files == 1 {
                            name = attr("name");
                        }
                    }
                    "hash" => hash_type = attr("type"),
                    "pieces" if files == 1 => {
                        if attr("type").as_deref() != Some("sha-256") {
                            return Err("metalink pieces are not sha-256".into());
                        }
                        piece_len = attr("length").and_then(|l| l.parse::<u32>().ok());
                    }
                    "url" => url_priority = attr("priority").and_then(|p| p.parse().ok()).unwrap_or(u32::MAX),
                    _ => {}
                }
                path.push(tag);
                text.clear();
            }
            // Bounded: no element we read is longer; the rest is ignored.
            Event::Text(t) if text.len() < 4096 => text.push_str(&t.xml10_content()),
            Event::GeneralRef(r) => {
                let resolved = match r.resolve_char_ref() {
                    Ok(Some(c)) => c.to_string(),
                    _ => quick_xml::escape::resolve_predefined_entity(&r).ok_or_else(|| format!("unknown entity &{};", &*r))?.to_owned(),
                };
                text.push_str(&resolved);
            }
            Event::End(_) => {
                let value = std::mem::take(&mut text);
                let value = value.trim();
                let parent = path.iter().rev().nth(1).map(String::as_str);
                if files == 1 {
                    match (path.last().map(String::as_str), parent) {
                        (Some("size"), Some("file")) => size = Some(value.parse::<u64>().map_err(|_| "metalink size is not a number")?),
                        (Some("hash"), Some("file")) if hash_type.as_deref() == Some("sha-256") => {
                            digest = Some(Digest::from_hex(value).map_err(|e| e.to_string())?)
                        }
                        (Some("hash"), Some("pieces")) => {
                            if pieces.len() as u64 > odi_core::manifest::MAX_ARTIFACT_LEN / u64::from(odi_core::manifest::MIN_CHUNK_SIZE) {
                                return Err("metalink lists too many pieces".into());
                            }
                            pieces.push(Digest::from_hex(value).map_err(|e| e.to_string())?);
                        }
                        (Some("url"), Some("file")) => urls.push((url_priority, value.to_owned())),
                        _ => {}
                    }
                }
                path.pop();
            }
            Event::Eof => break,
            _ => {}
        }
    }
    let size = size.ok_or("metalink has no <size>")?;
    let digest = digest.ok_or("metalink has no sha-256 <hash>")?;
    let chunk_size = piece_len.unwrap_or(odi_core::manifest::DEFAULT_CHUNK_SIZE);
    let manifest = ChunkManifest::new(size, chunk_size, digest, pieces).map_err(|e| format!("metalink does not add up: {e}"))?;
    urls.sort_by_key(|(p, _)| *p);
    let urls: Vec<String> = urls.into_iter().map(|(_, u)| u).filter(|u| u.starts_with("http://") || u.starts_with("https://")).collect();
    if urls.is_empty() {
        return Err("metalink lists no http(s) source".into());
    }
    Ok(Parsed { name: name.unwrap_or_default(), manifest, urls })
}

#[cfg(test)]
mod tests {
    use super::*;
    use odi_core::manifest::MIN_CHUNK_SIZE;

    #[test]
    fn round_trips() {
        let data: Vec<u8> = (0..3 * MIN_CHUNK_SIZE as usize + 5).map(|i| i as u8).collect();
        let m = ChunkManifest::of(&data, MIN_CHUNK_SIZE).unwrap();
        let urls = vec!["http://r1:1/r/c/a&b.bin".to_owned(), "http://r2:2/r/c/a&b.bin".to_owned()];
        let xml = render("a&b <x>.bin", &m, &urls);
        assert!(xml.contains("a&amp;b &lt;x&gt;.bin"));
        let parsed = parse(&xml).unwrap();
        assert_eq!(parsed, Parsed { name: "a&b <x>.bin".into(), manifest: m, urls });
    }

    #[test]
    fn refuses_documents_that_do_not_add_up() {
        let m = ChunkManifest::of(&[1u8; 10_000], MIN_CHUNK_SIZE).unwrap();
        let xml = render("f", &m, &["http://r/f".into()]);
        assert!(parse(&xml.replace("<size>10000</size>", "<size>99999999</size>")).unwrap_err().contains("does not add up"));
        assert!(parse(&xml.replace("<size>10000</size>", "<size>18446744073709551615</size>")).is_err());
        assert!(parse(&xml.replace("http://r/f", "file:///etc/passwd")).unwrap_err().contains("no http"));
        assert!(parse("<metalink><file").is_err());
        assert!(parse("not xml at all").is_err());
    }

    #[test]
    fn whitespace_in_names_and_urls_survives_a_round_trip() {
        let m = ChunkManifest::of(b"odi", MIN_CHUNK_SIZE).unwrap();
        let urls = vec!["http://r/a\r\nb".to_owned()];
        let parsed = parse(&render("a\tb\nc\r", &m, &urls)).unwrap();
        assert_eq!(parsed, Parsed { name: "a\tb\nc\r".into(), manifest: m, urls });
    }

    #[test]
    fn empty_files_have_no_pieces() {
        let m = ChunkManifest::of(b"", MIN_CHUNK_SIZE).unwrap();
        let xml = render("e", &m, &["http://r/e".into()]);
        assert!(!xml.contains("<pieces"));
        assert_eq!(parse(&xml).unwrap().manifest.total_len(), 0);
    }
}
