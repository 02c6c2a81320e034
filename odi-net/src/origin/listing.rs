//! Directory listings as web servers generate them (nginx `autoindex`, Apache `mod_autoindex`,
//! lighttpd `mod_dirlisting`): the entries of one directory, from the `href`s of its page.
//!
//! One rule reads all three: an entry is a link whose `href` is a single relative path segment
//! (percent-encoded), with a trailing `/` for a directory. Links to the parent (`../`, or an
//! absolute `/parent/` as Apache writes it), sort links (`?C=N;O=D`), anchors, absolute URLs and
//! anything with a `/` inside are not entries.

/// One entry of a listing, its name percent-decoded.
#[derive(Clone, Debug, Eq, PartialEq, Ord, PartialOrd)]
pub struct Entry {
    pub name: String,
    pub dir: bool,
}

/// Entries past this in one page are ignored (a listing is input from another server).
pub const MAX_ENTRIES_PER_PAGE: usize = 100_000;

/// The entries of one listing page, sorted, without duplicates.
pub fn parse(html: &str) -> Vec<Entry> {
    let mut out = Vec::new();
    let lower = html.to_ascii_lowercase();
    let mut at = 0;
    while let Some(found) = lower[at..].find("href") {
        let start = at + found + 4;
        at = start;
        let Some(value) = attribute_value(&html[start..]) else { continue };
        if let Some(entry) = entry(&decode_entities(value)) {
            out.push(entry);
            if out.len() >= MAX_ENTRIES_PER_PAGE {
                break;
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// `="value"`, `='value'` or `=value` after an attribute name (spaces allowed around `=`).
fn attribute_value(s: &str) -> Option<&str> {
    let s = s.trim_start().strip_prefix('=')?.trim_start();
    let (quote, rest) = match s.chars().next()? {
        q @ ('"' | '\'') => (Some(q), &s[1..]),
        _ => (None, s),
    };
    let end = match quote {
        Some(q) => rest.find(q)?,
        None => rest.find(|c: char| c.is_ascii_whitespace() || c == '>').unwrap_or(rest.len()),
    };
    Some(&rest[..end])
}

fn decode_entities(s: &str) -> String {
    s.replace("&amp;", "&").replace("&quot;", "\"").replace("&#39;", "'").replace("&lt;", "<").replace("&gt;", ">")
}

fn entry(href: &str) -> Option<Entry> {
    if href.is_empty() || href.starts_with(['?', '#', '/']) || href.contains("://") || href.contains(['?', '#']) {
        return None;
    }
    let href = href.strip_prefix("./").unwrap_or(href);
    let (segment, dir) = match href.strip_suffix('/') {
        Some(s) => (s, true),
        None => (href, false),
    };
    if segment.is_empty() || segment.contains('/') {
        return None;
    }
    let name = percent_encoding::percent_decode_str(segment).decode_utf8().ok()?.into_owned();
    if name == "." || name == ".." || name.contains(['/', '\\', '\0']) || name.chars().any(char::is_control) {
        return None;
    }
    Some(Entry { name, dir })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(html: &str) -> Vec<(String, bool)> {
        parse(html).into_iter().map(|e| (e.name, e.dir)).collect()
    }

    fn want(list: &[(&str, bool)]) -> Vec<(String, bool)> {
        let mut v: Vec<_> = list.iter().map(|(n, d)| ((*n).to_owned(), *d)).collect();
        v.sort();
        v
    }

    /// nginx 1.2x `autoindex on;` (the default HTML format).
    const NGINX: &str = r#"<html>
<head><title>Index of /pub/releases/</title></head>
<body>
<h1>Index of /pub/releases/</h1><hr><pre><a href="../">../</a>
<a href="v1.0/">v1.0/</a>                                              02-Dec-2026 01:10       -
<a href="v1.1%20beta/">v1.1 beta/</a>                                         02-Dec-2026 01:11       -
<a href="SHA256SUMS">SHA256SUMS</a>                                         02-Dec-2026 01:12     196
<a href="tool-1.1.tar.gz">tool-1.1.tar.gz</a>                                    02-Dec-2026 01:12    307200
<a href="caf%C3%A9%26more.txt">caf&#233;&amp;more.txt</a>                                  02-Dec-2026 01:12      12
</pre><hr></body>
</html>
"#;

    /// Apache 2.4 `mod_autoindex` with `FancyIndexing` and `HTMLTable`.
    const APACHE: &str = r#"<!DOCTYPE HTML PUBLIC "-//W3C//DTD HTML 3.2 Final//EN">
<html>
 <head>
  <title>Index of /releases</title>
 </head>
 <body>
<h1>Index of /releases</h1>
  <table>
   <tr><th valign="top"><img src="/icons/blank.gif" alt="[ICO]"></th><th><a href="?C=N;O=D">Name</a></th><th><a href="?C=M;O=A">Last modified</a></th><th><a href="?C=S;O=A">Size</a></th><th><a href="?C=D;O=A">Description</a></th></tr>
   <tr><th colspan="5"><hr></th></tr>
<tr><td valign="top"><img src="/icons/back.gif" alt="[PARENTDIR]"></td><td><a href="/">Parent Directory</a></td><td>&nbsp;</td><td align="right">  - </td><td>&nbsp;</td></tr>
<tr><td valign="top"><img src="/icons/folder.gif" alt="[DIR]"></td><td><a href="3.12/">3.12/</a></td><td align="right">2026-12-01 10:00  </td><td align="right">  - </td><td>&nbsp;</td></tr>
<tr><td valign="top"><img src="/icons/unknown.gif" alt="[   ]"></td><td><a href="alpine-3.12.iso">alpine-3.12.iso</a></td><td align="right">2026-12-01 10:00  </td><td align="right">150M</td><td>&nbsp;</td></tr>
<tr><td valign="top"><img src="/icons/text.gif" alt="[TXT]"></td><td><a href="alpine-3.12.iso.sha256">alpine-3.12.iso.sha256</a></td><td align="right">2026-12-01 10:00  </td><td align="right"> 90 </td><td>&nbsp;</td></tr>
   <tr><th colspan="5"><hr></th></tr>
</table>
<address>Apache/2.4.62 (Debian) Server at mirror.example Port 80</address>
</body></html>
"#;

    /// lighttpd 1.4 `dir-listing.activate = "enable"`.
    const LIGHTTPD: &str = r#"<!DOCTYPE html>
<html>
<head>
<title>Index of /dist/</title>
</head>
<body>
<h2>Index of /dist/</h2>
<div class="list">
<table summary="Directory Listing" cellpadding="0" cellspacing="0">
<thead><tr><th class="n">Name</th><th class="m">Last Modified</th><th class="s">Size</th><th class="t">Type</th></tr></thead>
<tbody>
<tr class="d"><td class="n"><a href="../">..</a>/</td><td class="m">&nbsp;</td><td class="s">- &nbsp;</td><td class="t">Directory</td></tr>
<tr class="d"><td class="n"><a href="old/">old</a>/</td><td class="m">2026-Dec-01 10:00:00</td><td class="s">- &nbsp;</td><td class="t">Directory</td></tr>
<tr><td class="n"><a href="sha256sum.txt">sha256sum.txt</a></td><td class="m">2026-Dec-01 10:00:00</td><td class="s">0.1K</td><td class="t">text/plain</td></tr>
<tr><td class="n"><a href="pkg_2.0_amd64.deb">pkg_2.0_amd64.deb</a></td><td class="m">2026-Dec-01 10:00:00</td><td class="s">2.3M</td><td class="t">application/octet-stream</td></tr>
</tbody>
</table>
</div>
<div class="foot">lighttpd/1.4.76</div>
</body>
</html>
"#;

    #[test]
    fn nginx_autoindex() {
        assert_eq!(names(NGINX), want(&[("v1.0", true), ("v1.1 beta", true), ("SHA256SUMS", false), ("tool-1.1.tar.gz", false), ("café&more.txt", false)]));
    }

    #[test]
    fn apache_fancy_index() {
        assert_eq!(names(APACHE), want(&[("3.12", true), ("alpine-3.12.iso", false), ("alpine-3.12.iso.sha256", false)]));
    }

    #[test]
    fn lighttpd_dir_listing() {
        assert_eq!(names(LIGHTTPD), want(&[("old", true), ("sha256sum.txt", false), ("pkg_2.0_amd64.deb", false)]));
    }

    #[test]
    fn links_that_are_not_entries_are_skipped() {
        let html = r##"<a href="http://evil.example/x">x</a><a href="a/b">deep</a><a href="%2e%2e/">up</a>
            <a href='single.txt'>s</a><a href=bare.bin>b</a><a href="#top">t</a><a href="./dot.txt">d</a><a href="x%00y">nul</a><a href="">e</a>"##;
        assert_eq!(names(html), want(&[("single.txt", false), ("bare.bin", false), ("dot.txt", false)]));
        assert!(parse("<a href=").is_empty() && parse("href=\"unterminated").is_empty(), "truncated pages do not panic");
    }
}
