//! `GET /api/v1/openapi.json`: the OpenAPI 3 document of the admin API, checked in as
//! `odi-net/openapi.json` and compiled into the binary. It is kept by hand; the tests below fail
//! when a route of the `/api/v1/` router (the `match` arms of `admin.rs` and `webhooks.rs`, and
//! the routes `mod.rs` answers before them) is missing from it, or when it names one the router
//! does not have. `odi-cli/tests/cli_openapi.rs` runs schemathesis against a running directory
//! with it: answers, statuses and content types as documented.

use std::sync::OnceLock;

use http::header::{self, HeaderValue};
use http::{Method, Response, StatusCode};

use crate::http::{Body, error, full};

/// The document, as checked in.
pub(super) const DOCUMENT: &str = include_str!("../../openapi.json");

pub(super) fn document() -> Response<Body> {
    let mut resp = Response::new(full(DOCUMENT));
    *resp.status_mut() = StatusCode::OK;
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// One segment of a documented path.
enum Segment {
    Literal(String),
    /// One segment's worth; only these values when the parameter is an enum.
    Param(Option<Vec<String>>),
    /// `{path}`, last: an artifact's path, every segment left.
    Rest,
}

/// The documented paths (segments after `/api/v1/`) and their methods.
type Templates = Vec<(Vec<Segment>, Vec<String>)>;

fn templates() -> &'static Templates {
    static TEMPLATES: OnceLock<Templates> = OnceLock::new();
    TEMPLATES.get_or_init(|| {
        let doc: serde_json::Value = serde_json::from_str(DOCUMENT).unwrap_or_default();
        let Some(paths) = doc["paths"].as_object() else { return Vec::new() };
        paths
            .iter()
            .map(|(path, item)| {
                // The values an enum path parameter takes, from any operation that declares it.
                let values = |name: &str| {
                    item.as_object()?.values().find_map(|op| {
                        let param = op["parameters"].as_array()?.iter().find(|p| p["name"] == name && p["in"] == "path")?;
                        Some(param["schema"]["enum"].as_array()?.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect())
                    })
                };
                let segments = path
                    .trim_start_matches('/')
                    .split('/')
                    .map(|s| match s {
                        "{path}" => Segment::Rest,
                        _ if s.starts_with('{') => Segment::Param(values(s.trim_matches(['{', '}']))),
                        _ => Segment::Literal(s.to_owned()),
                    })
                    .collect();
                let methods = item.as_object().map(|o| o.keys().map(|m| m.to_ascii_uppercase()).collect()).unwrap_or_default();
                (segments, methods)
            })
            .collect()
    })
}

/// Whether `rest` (what follows `/api/v1/`) fits `template`.
fn fits(template: &[Segment], rest: &str) -> bool {
    let segments: Vec<&str> = match template.last() {
        Some(Segment::Rest) => rest.splitn(template.len(), '/').collect(),
        _ => rest.split('/').collect(),
    };
    segments.len() == template.len()
        && template.iter().zip(&segments).all(|(t, s)| match t {
            Segment::Literal(literal) => literal == s,
            Segment::Param(Some(values)) => values.iter().any(|v| v == s),
            Segment::Param(None) | Segment::Rest => !s.is_empty(),
        })
}

/// The answer to `method /api/v1/{rest}` that no route takes: 405 with `Allow` when the path
/// is one the API has for other methods, else 404.
pub(super) fn unrouted(method: &Method, rest: &str) -> Response<Body> {
    let mut allow: Vec<&str> = templates().iter().filter(|(t, _)| fits(t, rest)).flat_map(|(_, m)| m.iter().map(String::as_str)).collect();
    allow.sort_unstable();
    allow.dedup();
    if allow.is_empty() {
        return error(StatusCode::NOT_FOUND, format!("no such admin endpoint: {method} /api/v1/{rest}"));
    }
    let allow = allow.join(", ");
    let mut resp = error(StatusCode::METHOD_NOT_ALLOWED, format!("method {method} not allowed on /api/v1/{rest}; use {allow}"));
    if let Ok(value) = HeaderValue::from_str(&allow) {
        resp.headers_mut().insert(header::ALLOW, value);
    }
    resp
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// `(METHOD, /template)` with every parameter written `{}`.
    type Route = (String, String);

    fn normalize(template: &str) -> String {
        let mut out = String::new();
        let mut in_param = false;
        for c in template.chars() {
            match c {
                '{' => {
                    in_param = true;
                    out.push_str("{}");
                }
                '}' => in_param = false,
                _ if in_param => {}
                _ => out.push(c),
            }
        }
        out
    }

    /// The routes of the `match` arms `(Method::X, [segments])` in `source`, under `prefix`.
    fn match_arms(source: &str, prefix: &str) -> Vec<Route> {
        let mut routes = Vec::new();
        let mut rest = source;
        while let Some(at) = rest.find("(Method::") {
            rest = &rest[at + "(Method::".len()..];
            let Some(comma) = rest.find(',') else { break };
            let method = &rest[..comma];
            if !method.chars().all(|c| c.is_ascii_uppercase()) {
                continue;
            }
            let after = rest[comma + 1..].trim_start();
            let Some(list) = after.strip_prefix('[') else { continue };
            // The segment list, up to its closing bracket (alternatives nest in parentheses).
            let (mut depth, mut end) = (0, None);
            for (i, c) in list.char_indices() {
                match c {
                    '(' => depth += 1,
                    ')' => depth -= 1,
                    ']' if depth == 0 => {
                        end = Some(i);
                        break;
                    }
                    _ => {}
                }
            }
            let Some(end) = end else { continue };
            let mut path = prefix.to_owned();
            for segment in list[..end].split(',').map(str::trim).filter(|s| !s.is_empty()) {
                path.push('/');
                match segment.strip_prefix('"').and_then(|s| s.strip_suffix('"')) {
                    Some(literal) => path.push_str(literal),
                    None => path.push_str("{}"),
                }
            }
            routes.push((method.to_owned(), if path.is_empty() { "/".into() } else { path }));
        }
        routes
    }

    /// What the `/api/v1/` router answers, read from its source.
    fn router() -> BTreeSet<Route> {
        let mut routes: BTreeSet<Route> = BTreeSet::new();
        routes.extend(match_arms(include_str!("admin.rs"), ""));
        routes.extend(match_arms(include_str!("webhooks.rs"), "/webhooks"));
        // `mod.rs` answers `if rest == "NAME"` itself (reads only), before the admin router.
        let module = include_str!("mod.rs");
        for part in module.split("rest == \"").skip(1) {
            let name = &part[..part.find('"').expect("a closing quote")];
            routes.insert(("GET".into(), format!("/{name}")));
        }
        routes
    }

    fn doc() -> serde_json::Value {
        serde_json::from_str(DOCUMENT).expect("openapi.json is JSON")
    }

    fn documented() -> BTreeSet<Route> {
        let doc = doc();
        let mut routes = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for method in item.as_object().expect("a path item").keys() {
                routes.insert((method.to_ascii_uppercase(), normalize(path)));
            }
        }
        routes
    }

    #[test]
    fn the_parser_reads_the_routers_arms() {
        let routes = router();
        for route in
            [("GET", "/catalogs"), ("PUT", "/catalogs/{}/artifacts/{}"), ("POST", "/relays/{}/{}"), ("GET", "/webhooks/{}/deliveries"), ("GET", "/audit")]
        {
            assert!(routes.contains(&(route.0.to_owned(), route.1.to_owned())), "{route:?} not read from the router: {routes:?}");
        }
        assert!(routes.len() >= 20, "only {} routes read", routes.len());
    }

    #[test]
    fn every_route_is_documented_and_every_documented_route_exists() {
        let (router, documented) = (router(), documented());
        let missing: Vec<_> = router.difference(&documented).collect();
        let extra: Vec<_> = documented.difference(&router).collect();
        assert!(missing.is_empty(), "routes of /api/v1/ missing from odi-net/openapi.json: {missing:?}");
        assert!(extra.is_empty(), "odi-net/openapi.json names routes /api/v1/ does not have: {extra:?}");
    }

    #[test]
    fn every_reference_resolves_and_every_operation_has_an_id_and_an_answer() {
        let doc = doc();
        assert_eq!(doc["openapi"], "3.0.3");
        assert_eq!(doc["servers"][0]["url"], "/api/v1");
        let schemas = doc["components"]["schemas"].as_object().expect("schemas");
        let text = DOCUMENT;
        for part in text.split("\"$ref\": \"#/components/schemas/").skip(1) {
            let name = &part[..part.find('"').expect("a closing quote")];
            assert!(schemas.contains_key(name), "$ref to an undefined schema `{name}`");
        }
        let mut ids = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for (method, op) in item.as_object().expect("a path item") {
                let id = op["operationId"].as_str().unwrap_or_else(|| panic!("{method} {path} has no operationId"));
                assert!(ids.insert(id.to_owned()), "operationId `{id}` used twice");
                let answers = op["responses"].as_object().unwrap_or_else(|| panic!("{method} {path} has no responses"));
                assert!(answers.keys().any(|k| k.starts_with('2')), "{method} {path} documents no success");
                for name in path.split('{').skip(1).map(|p| &p[..p.find('}').expect("a closing brace")]) {
                    let declared = op["parameters"].as_array().is_some_and(|ps| ps.iter().any(|p| p["name"] == name && p["in"] == "path"));
                    assert!(declared, "{method} {path} does not declare its path parameter `{name}`");
                }
            }
        }
    }

    #[test]
    fn other_methods_on_a_known_path_get_405_with_allow_and_unknown_paths_404() {
        let resp = unrouted(&Method::TRACE, "catalogs");
        assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(resp.headers()[header::ALLOW], "GET, POST");
        let resp = unrouted(&Method::POST, "catalogs/rel/artifacts/a/b/c.iso");
        assert_eq!(resp.headers()[header::ALLOW], "DELETE, PUT");
        assert_eq!(unrouted(&Method::GET, "catalogs/rel/nothing").status(), StatusCode::NOT_FOUND);
        assert_eq!(unrouted(&Method::GET, "catalogs/rel/artifacts/").status(), StatusCode::NOT_FOUND);
        assert_eq!(unrouted(&Method::GET, "nothing").status(), StatusCode::NOT_FOUND);
        let relay = "0".repeat(64);
        assert_eq!(unrouted(&Method::GET, &format!("relays/{relay}/drain")).status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(unrouted(&Method::POST, &format!("relays/{relay}/paint")).status(), StatusCode::NOT_FOUND);
    }

    #[test]
    fn the_webhook_event_kinds_are_the_directorys() {
        let doc = doc();
        let kinds: Vec<&str> = doc["components"]["schemas"]["AddHook"]["properties"]["events"]["items"]["enum"]
            .as_array()
            .expect("an enum")
            .iter()
            .map(|k| k.as_str().expect("a kind"))
            .collect();
        assert_eq!(kinds, super::super::events::KINDS);
    }

    #[test]
    fn the_answer_is_the_document() {
        let resp = document();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.headers()[header::CONTENT_TYPE], "application/json");
    }
}
