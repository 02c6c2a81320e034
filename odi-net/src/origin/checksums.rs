//! Checksum files as projects publish them next to their downloads: `SHA256SUMS`,
//! `sha256sum.txt` (the output of `sha256sum`, GNU format, text or binary mode, with GNU's
//! backslash escapes) and BSD `sha256 -r`/`shasum --tag` lines (`SHA256 (name) = hex`), and
//! `NAME.sha256` files holding either format or the bare digest of `NAME`.

use odi_core::Digest;

/// Whether a file named `name` is a checksum file this module reads.
pub fn is_checksum_file(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    matches!(lower.as_str(), "sha256sums" | "sha256sums.txt" | "sha256sum.txt" | "sha256sum") || (lower.ends_with(".sha256") && lower.len() > 7)
}

/// The digests a checksum file gives, by the name it gives them for (relative to the file's own
/// directory, `./` removed). A `NAME.sha256` file with a bare digest covers `NAME`. Lines that
/// are neither format (comments, PGP armour, other algorithms) are skipped.
pub fn parse(file_name: &str, text: &str) -> Vec<(String, Digest)> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim_end_matches('\r');
        if let Some(pair) = bsd_line(line).or_else(|| gnu_line(line)) {
            out.push(pair);
        } else if let Some(digest) = bare_digest(line)
            && let Some(target) = file_name.strip_suffix(".sha256").or_else(|| file_name.strip_suffix(".SHA256"))
        {
            out.push((target.to_owned(), digest));
        }
    }
    for (name, _) in &mut out {
        while let Some(rest) = name.strip_prefix("./") {
            *name = rest.to_owned();
        }
    }
    // After `./` is gone: `./` alone names nothing.
    out.retain(|(name, _)| !name.is_empty());
    out
}

fn hex_digest(s: &str) -> Option<Digest> {
    if s.len() != 64 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    Digest::from_hex(&s.to_ascii_lowercase()).ok()
}

fn bare_digest(line: &str) -> Option<Digest> {
    hex_digest(line.trim())
}

/// `SHA256 (name) = hex`.
fn bsd_line(line: &str) -> Option<(String, Digest)> {
    let rest = line.strip_prefix("SHA256 (")?;
    let (name, hex) = rest.rsplit_once(") = ")?;
    Some((name.to_owned(), hex_digest(hex.trim())?))
}

/// `hex  name` (text mode), `hex *name` (binary mode); a leading `\` means the name has `\\`
/// and `\n` escapes.
fn gnu_line(line: &str) -> Option<(String, Digest)> {
    let (escaped, line) = match line.strip_prefix('\\') {
        Some(rest) => (true, rest),
        None => (false, line),
    };
    let hex = line.get(..64)?;
    let digest = hex_digest(hex)?;
    let rest = line.get(64..)?;
    let name = rest.strip_prefix("  ").or_else(|| rest.strip_prefix(" *"))?;
    let name = if escaped { unescape(name)? } else { name.to_owned() };
    Some((name, digest))
}

fn unescape(s: &str) -> Option<String> {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next()? {
                '\\' => out.push('\\'),
                'n' => out.push('\n'),
                'r' => out.push('\r'),
                _ => return None,
            }
        } else {
            out.push(c);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "a591a6d40bf420404a011733cfb7b190d62c65bf0bcda32b57b277d9ad9f146e";
    const B: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn d(hex: &str) -> Digest {
        Digest::from_hex(hex).unwrap()
    }

    #[test]
    fn names_of_checksum_files() {
        for yes in ["SHA256SUMS", "sha256sum.txt", "SHA256SUMS.txt", "x.iso.sha256", "X.ISO.SHA256"] {
            assert!(is_checksum_file(yes), "{yes}");
        }
        for no in ["SHA256SUMS.gpg", "MD5SUMS", "sha256", ".sha256", "x.sha256.asc", "sha512sum.txt"] {
            assert!(!is_checksum_file(no), "{no}");
        }
    }

    #[test]
    fn gnu_text_and_binary_mode() {
        // As `sha256sum tool.tar.gz *.iso` and `sha256sum -b` print them (Debian, Ubuntu).
        let text = format!("{A}  tool-1.1.tar.gz\n{B} *debian-12.iso\n{A}  ./sub/dir/file.txt\n");
        assert_eq!(parse("SHA256SUMS", &text), vec![("tool-1.1.tar.gz".into(), d(A)), ("debian-12.iso".into(), d(B)), ("sub/dir/file.txt".into(), d(A))]);
    }

    #[test]
    fn gnu_escaped_names_and_uppercase_hex() {
        let text = format!("\\{A}  back\\\\slash\\nnewline\n{}  UPPER\n", B.to_ascii_uppercase());
        assert_eq!(parse("SHA256SUMS", &text), vec![("back\\slash\nnewline".into(), d(A)), ("UPPER".into(), d(B))]);
    }

    #[test]
    fn bsd_tag_format() {
        // As `shasum -a 256 --tag` and FreeBSD's `sha256` print them.
        let text = format!("SHA256 (FreeBSD-14.1-RELEASE-amd64-disc1.iso) = {A}\nSHA256 (weird ) = name) = {B}\n");
        assert_eq!(parse("CHECKSUM.SHA256", &text), vec![("FreeBSD-14.1-RELEASE-amd64-disc1.iso".into(), d(A)), ("weird ) = name".into(), d(B))]);
    }

    #[test]
    fn a_dot_sha256_file_with_a_bare_digest_covers_its_stem() {
        assert_eq!(parse("alpine-3.12.iso.sha256", &format!("{A}\n")), vec![("alpine-3.12.iso".into(), d(A))]);
        assert_eq!(parse("alpine-3.12.iso.sha256", &format!("{A}  alpine-3.12.iso\n")), vec![("alpine-3.12.iso".into(), d(A))]);
        assert!(parse("SHA256SUMS", &format!("{A}\n")).is_empty(), "a bare digest names no file in SHA256SUMS");
    }

    #[test]
    fn a_name_that_is_only_dot_slashes_is_dropped() {
        assert_eq!(parse("SHA256SUMS", &format!("{A}  ./\n{A}  ././\n{B}  ./b\n")), vec![("b".to_owned(), d(B))]);
    }

    #[test]
    fn other_lines_are_skipped() {
        let text = format!(
            "-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA256\n\n# comment\n{}  short\n{A}\tTAB\nMD5 (x) = d41d8cd98f00b204e9800998ecf8427e\n{A}  ok\r\n",
            &A[..60]
        );
        assert_eq!(parse("SHA256SUMS", &text), vec![("ok".into(), d(A))]);
    }
}
