//! The dashboard at `/ui/`: server-rendered pages (askama templates compiled into the binary,
//! `odi-net/templates/ui/`), readable without JavaScript; a few lines of it only add live events.
//! An admin logs in with the admin token (the same guessing limit as the API) and gets a session
//! cookie (HttpOnly, SameSite=Strict, Secure on an https directory; 12 h; in memory, so a restart
//! logs everyone out). Every change is a POST form carrying the session's CSRF token, and goes
//! through the same planning and commit as the admin API. Every list is paginated: no page grows
//! with the network.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use askama::Template;
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use odi_core::message::NodeId;
use odi_core::path::{ArtifactPath, CatalogName};

use super::Shared;
use super::admin::{self, Holder, Refused};
use super::audit::{self, Who};
use super::events::What;
use crate::driver::Driver as _;
use crate::guard::ClientAddr;
use crate::http::{Body, error, full};
use crate::{keys, unix_now};

/// Rows on one page of a list.
pub(super) const PAGE: usize = 100;
const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// Sessions kept at most; the oldest go first (each login makes one).
const MAX_SESSIONS: usize = 1024;
const COOKIE: &str = "odi_session";
/// Longest form accepted.
const MAX_FORM: usize = 64 << 10;

struct Session {
    expires: Instant,
    csrf: String,
    /// One message for the next page shown (what the last action did).
    flash: Option<(String, bool)>,
    /// Who logged in: what the audit log names for the session's changes.
    who: Who,
}

/// The logged-in sessions, by cookie value.
#[derive(Default)]
pub(super) struct Sessions(Mutex<HashMap<String, Session>>);

impl Sessions {
    fn create(&self, who: Who) -> String {
        let id = hex::encode(keys::random_bytes::<32>());
        let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        map.retain(|_, s| s.expires > now);
        if map.len() >= MAX_SESSIONS
            && let Some(oldest) = map.iter().min_by_key(|(_, s)| s.expires).map(|(k, _)| k.clone())
        {
            map.remove(&oldest);
        }
        map.insert(id.clone(), Session { expires: now + SESSION_TTL, csrf: hex::encode(keys::random_bytes::<16>()), flash: None, who });
        id
    }

    /// The session's CSRF token, its pending message and who it is, if the cookie names a live
    /// session.
    fn get(&self, id: &str) -> Option<(String, Option<Flash>, Who)> {
        let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let session = map.get_mut(id).filter(|s| s.expires > Instant::now())?;
        Some((session.csrf.clone(), session.flash.take(), session.who.clone()))
    }

    fn flash(&self, id: &str, message: String, is_error: bool) {
        if let Some(s) = self.0.lock().unwrap_or_else(PoisonError::into_inner).get_mut(id) {
            s.flash = Some((message, is_error));
        }
    }

    fn remove(&self, id: &str) {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).remove(id);
    }
}

/// A message for the next page a session sees, and whether it reports an error.
type Flash = (String, bool);

/// What every page's frame shows.
struct Frame {
    logged_in: bool,
    csrf: String,
    message: String,
    message_is_error: bool,
}

impl Frame {
    fn of(csrf: String, flash: Option<(String, bool)>) -> Self {
        let (message, message_is_error) = flash.unwrap_or_default();
        Self { logged_in: true, csrf, message, message_is_error }
    }
}

#[derive(Template)]
#[template(path = "ui/login.html")]
struct LoginPage {
    logged_in: bool,
    csrf: String,
    message: String,
    message_is_error: bool,
}

struct RelayRow {
    id: String,
    short: String,
    url: String,
    state: String,
    reason: String,
    budget: String,
    bandwidth: String,
    held: usize,
    assigned: usize,
    active: u32,
    last_seen: String,
    actions: Vec<&'static str>,
}

#[derive(Template)]
#[template(path = "ui/relays.html")]
struct RelaysPage {
    logged_in: bool,
    csrf: String,
    message: String,
    message_is_error: bool,
    rows: Vec<RelayRow>,
    states: &'static [&'static str],
    state: String,
    total: usize,
    ready: usize,
    page: usize,
    pages: usize,
}

struct CatalogRow {
    name: String,
    artifacts: usize,
    bytes: String,
    replicas: u32,
    mutable: bool,
    seq: u64,
}

#[derive(Template)]
#[template(path = "ui/catalogs.html")]
struct CatalogsPage {
    logged_in: bool,
    csrf: String,
    message: String,
    message_is_error: bool,
    rows: Vec<CatalogRow>,
}

struct ArtifactRow {
    path: String,
    size: String,
    digest: String,
    digest_short: String,
    tags: String,
}

struct ConflictRow {
    path: String,
    winner: String,
    losers: String,
}

#[derive(Template)]
#[template(path = "ui/catalog.html")]
struct CatalogPage {
    logged_in: bool,
    csrf: String,
    message: String,
    message_is_error: bool,
    name: String,
    query: String,
    query_url: String,
    matched: usize,
    rows: Vec<ArtifactRow>,
    page: usize,
    pages: usize,
    conflicts: Vec<ConflictRow>,
}

struct HotRow {
    names: String,
    label: String,
    rate: String,
    extra: u32,
    digest: String,
    y: usize,
    bar: usize,
}

#[derive(Template)]
#[template(path = "ui/hot.html")]
struct HotPage {
    logged_in: bool,
    csrf: String,
    message: String,
    message_is_error: bool,
    rows: Vec<HotRow>,
    chart_width: usize,
    chart_height: usize,
    expunges: Vec<(String, usize)>,
}

struct EventRow {
    kind: &'static str,
    time: String,
    detail: String,
}

#[derive(Template)]
#[template(path = "ui/events.html")]
struct EventsPage {
    logged_in: bool,
    csrf: String,
    message: String,
    message_is_error: bool,
    rows: Vec<EventRow>,
    last: u64,
}

struct AuditRow {
    id: u64,
    time: String,
    who: String,
    action: String,
    target: String,
    detail: String,
    client: String,
    outcome: String,
}

#[derive(Template)]
#[template(path = "ui/audit.html")]
struct AuditPage {
    logged_in: bool,
    csrf: String,
    message: String,
    message_is_error: bool,
    rows: Vec<AuditRow>,
    /// The page's `?before=` (0: the newest page) and the next page's (0: none).
    before: u64,
    next: u64,
}

const STATES: &[&str] = &["enrolled", "syncing", "ready", "draining", "suspended", "unhealthy", "quarantined"];

/// `/ui/{rest}`.
pub(super) async fn ui(shared: &Arc<Shared>, req: Request<Incoming>, rest: &str) -> Response<Body> {
    let method = req.method().clone();
    match (&method, rest) {
        (&Method::GET, "login") => return page_of(&LoginPage { logged_in: false, csrf: String::new(), message: String::new(), message_is_error: false }),
        (&Method::POST, "login") => return login(shared, req).await,
        _ => {}
    }
    let cookie = session_cookie(&req);
    let Some((csrf, flash, who)) = cookie.as_deref().and_then(|id| shared.ui_sessions.get(id)) else {
        return if method == Method::GET { see_other("/ui/login") } else { error(StatusCode::FORBIDDEN, "log in first: /ui/login") };
    };
    let session = cookie.unwrap_or_default();
    let client = req.extensions().get::<ClientAddr>().map(|c| c.0);
    let query = form_fields(req.uri().query().unwrap_or_default().as_bytes());
    let segments: Vec<&str> = rest.split('/').collect();
    match (method, segments.as_slice()) {
        (Method::GET, [""]) => see_other("/ui/relays"),
        (Method::GET, ["relays"]) => relays_page(shared, Frame::of(csrf, flash), &query),
        (Method::GET, ["catalogs"]) => catalogs_page(shared, Frame::of(csrf, flash)),
        (Method::GET, ["catalogs", name]) => catalog_page(shared, Frame::of(csrf, flash), name, &query),
        (Method::GET, ["hot"]) => hot_page(shared, Frame::of(csrf, flash)),
        (Method::GET, ["events"]) => events_page(shared, Frame::of(csrf, flash)),
        (Method::GET, ["audit"]) => audit_page(shared, Frame::of(csrf, flash), &query),
        (Method::GET, ["events", "stream"]) => super::events::stream(&shared.events, &req, false),
        (Method::POST, segments) => {
            let segments: Vec<String> = segments.iter().map(|s| (*s).to_owned()).collect();
            let form = match read_form(req).await {
                Ok(f) => f,
                Err(resp) => return resp,
            };
            if field(&form, "csrf") != Some(csrf.as_str()) {
                return error(StatusCode::FORBIDDEN, "the form's CSRF token is missing or stale; reload the page and try again");
            }
            let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
            act(shared, &session, (&who, client), &segments, &form).await
        }
        _ => error(StatusCode::NOT_FOUND, format!("no such page: /ui/{rest}")),
    }
}

/// A POST: the change, a message for the next page, and a redirect back.
async fn act(shared: &Arc<Shared>, session: &str, (who, client): (&Who, Option<IpAddr>), segments: &[&str], form: &[(String, String)]) -> Response<Body> {
    // The admin API call the action is, for the audit log.
    let (method, call) = match segments {
        ["relays", id, action] => ("POST", format!("relays/{id}/{action}")),
        ["catalogs", name, "expunge"] => {
            let path = field(form, "path").unwrap_or_default();
            ("DELETE", format!("catalogs/{name}/artifacts/{}", percent_encoding::utf8_percent_encode(path, percent_encoding::NON_ALPHANUMERIC)))
        }
        ["catalogs", name, "tag"] => ("POST", format!("catalogs/{name}/tags")),
        _ => ("GET", String::new()),
    };
    let (back, outcome) = match segments {
        ["logout"] => {
            shared.ui_sessions.remove(session);
            let mut resp = see_other("/ui/login");
            resp.headers_mut().insert(header::SET_COOKIE, HeaderValue::from_static("odi_session=; Path=/ui; Max-Age=0; HttpOnly; SameSite=Strict"));
            return resp;
        }
        ["relays", id, action @ ("drain" | "undrain" | "readmit")] => {
            let back = "/ui/relays".to_owned();
            let Ok(relay) = id.parse::<NodeId>() else { return error(StatusCode::BAD_REQUEST, "malformed relay id") };
            let (drain, readmit) = match *action {
                "drain" => (Some(true), false),
                "undrain" => (Some(false), false),
                _ => (None, true),
            };
            let outcome = admin::plan_and_commit(shared, |d| d.plan_relay_admin(&relay, drain, readmit)).await;
            if outcome.is_ok() {
                let relay = relay.to_string();
                shared.announce(match *action {
                    "drain" => What::RelayDrained { relay },
                    "undrain" => What::RelayUndrained { relay },
                    _ => What::RelayReadmitted { relay },
                });
            }
            (back, outcome.map(|()| format!("relay {}: {action} done", short(id))))
        }
        ["catalogs", name, "expunge"] => {
            let back = format!("/ui/catalogs/{name}");
            let path = field(form, "path").unwrap_or_default();
            let encoded = percent_encoding::utf8_percent_encode(path, percent_encoding::NON_ALPHANUMERIC).to_string();
            let resp = admin::expunge(shared, name, &encoded).await;
            let outcome = if resp.status().is_success() { Ok(format!("expunged {path}")) } else { Err(resp) };
            (back, outcome)
        }
        ["catalogs", name, "tag"] => {
            let back = format!("/ui/catalogs/{name}");
            let (Ok(catalog), Ok(path)) = (CatalogName::new(name), ArtifactPath::new(field(form, "path").unwrap_or_default())) else {
                return error(StatusCode::BAD_REQUEST, "malformed catalog name or artifact path");
            };
            let tag = field(form, "tag").unwrap_or_default().trim().to_owned();
            let label = format!("tagged {path} `{tag}`");
            let outcome = admin::plan_and_commit(shared, |d| d.plan_tag(&catalog, &path, vec![tag], Vec::new(), unix_now())).await;
            if outcome.is_ok() {
                let tags = shared.lock().lookup(catalog.as_str(), &path).map(|a| a.tags.clone()).unwrap_or_default();
                shared.announce(What::TagSet { catalog: catalog.to_string(), path: path.to_string(), tags });
            }
            (back, outcome.map(|()| label))
        }
        _ => return error(StatusCode::NOT_FOUND, format!("no such action: /ui/{}", segments.join("/"))),
    };
    let described = odi_core::audit::describe(method, &call);
    let detail = match segments {
        ["catalogs", _, "tag"] => format!("{} +{}", field(form, "path").unwrap_or_default(), field(form, "tag").unwrap_or_default().trim()),
        _ => String::new(),
    };
    match outcome {
        Ok(done) => {
            if let Some((action, target)) = described {
                audit::record(shared, who, action, target, format!("{detail} (dashboard)").trim().to_owned(), client, StatusCode::OK, String::new());
            }
            shared.ui_sessions.flash(session, done, false);
        }
        Err(resp) => {
            let status = resp.status();
            let reason = error_reason(resp).await;
            if let Some((action, target)) = described {
                audit::record(shared, who, action, target, format!("{detail} (dashboard)").trim().to_owned(), client, status, reason.clone());
            }
            shared.ui_sessions.flash(session, reason, true);
        }
    }
    see_other(&back)
}

/// The one-line reason of an error answer of the admin API.
async fn error_reason(resp: Response<Body>) -> String {
    let status = resp.status();
    let body = resp.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let text = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
        .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
    format!("{status}: {text}")
}

async fn login(shared: &Arc<Shared>, req: Request<Incoming>) -> Response<Body> {
    let client = req.extensions().get::<ClientAddr>().map(|c| c.0);
    let form = match read_form(req).await {
        Ok(f) => f,
        Err(resp) => return resp,
    };
    let token = field(&form, "token").unwrap_or_default().trim();
    let refused = |message: String| {
        let mut resp = page_of(&LoginPage { logged_in: false, csrf: String::new(), message, message_is_error: true });
        *resp.status_mut() = StatusCode::FORBIDDEN;
        resp
    };
    let user = field(&form, "user").unwrap_or_default().trim();
    if !user.is_empty() {
        let password = field(&form, "password").unwrap_or_default();
        match super::ldap::login(shared, client, user, password).await {
            Ok(name) => return logged_in(shared, Who::User(name)),
            Err((status, why)) => {
                let mut resp = refused(why);
                *resp.status_mut() = status;
                return resp;
            }
        }
    }
    let who = match admin::holder_for(shared, client, token) {
        Ok(Holder::Admin) => Who::Admin,
        Ok(Holder::Publisher(catalog)) => return refused(format!("that is a publisher's token for `{catalog}`; the dashboard needs the admin token")),
        Err(Refused::Limited(secs)) => return refused(format!("too many wrong tokens from this address; try again in {secs}s")),
        Err(Refused::Wrong) => return refused("wrong token".to_owned()),
    };
    logged_in(shared, who)
}

/// A new session for `who`, and the way in.
fn logged_in(shared: &Shared, who: Who) -> Response<Body> {
    let id = shared.ui_sessions.create(who);
    let secure = if shared.public_url.get().is_some_and(|u| u.starts_with("https://")) { "; Secure" } else { "" };
    let cookie = format!("{COOKIE}={id}; Path=/ui; Max-Age={}; HttpOnly; SameSite=Strict{secure}", SESSION_TTL.as_secs());
    let mut resp = see_other("/ui/relays");
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    resp
}

fn relays_page(shared: &Shared, frame: Frame, query: &[(String, String)]) -> Response<Body> {
    let state = field(query, "state").filter(|s| STATES.contains(s)).unwrap_or_default().to_owned();
    let now = shared.now();
    let all = shared.lock().relays(now);
    let ready = all.iter().filter(|r| r.status == odi_core::message::RelayStatus::Ready).count();
    let status_of = |r: &odi_core::directory::RelayView| serde_json::to_value(r.status).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default();
    let chosen: Vec<_> = all.iter().filter(|r| state.is_empty() || status_of(r) == state).collect();
    let (page, pages) = paging(field(query, "page"), chosen.len());
    let rows = chosen
        .iter()
        .skip(page * PAGE)
        .take(PAGE)
        .map(|r| {
            let id = r.id.to_string();
            let state = status_of(r);
            let actions: Vec<&'static str> = match state.as_str() {
                "draining" => vec!["undrain"],
                "quarantined" | "suspended" | "unhealthy" => vec!["readmit", "drain"],
                _ => vec!["drain"],
            };
            RelayRow {
                short: short(&id),
                url: r.url.to_string(),
                reason: r.quarantined.clone().or_else(|| r.reason.clone()).unwrap_or_default(),
                budget: format!("{} of {}", bytes(r.held_bytes), bytes(r.capacity.disk_budget)),
                bandwidth: if r.capacity.bandwidth == 0 { "unlimited".to_owned() } else { format!("{}/s", bytes(r.capacity.bandwidth)) },
                held: r.held,
                assigned: r.assigned,
                active: r.active,
                last_seen: r.last_seen_ms.map_or_else(|| "none since start".to_owned(), |ms| format!("{:.1} s ago", ms as f64 / 1000.0)),
                id,
                state,
                actions,
            }
        })
        .collect();
    let Frame { logged_in, csrf, message, message_is_error } = frame;
    page_of(&RelaysPage { logged_in, csrf, message, message_is_error, rows, states: STATES, state, total: chosen.len(), ready, page, pages })
}

fn catalogs_page(shared: &Shared, frame: Frame) -> Response<Body> {
    let rows = shared
        .lock()
        .catalogs()
        .into_iter()
        .map(|c| CatalogRow { name: c.name.to_string(), artifacts: c.artifacts, bytes: bytes(c.bytes), replicas: c.replicas, mutable: c.mutable, seq: c.seq })
        .collect();
    let Frame { logged_in, csrf, message, message_is_error } = frame;
    page_of(&CatalogsPage { logged_in, csrf, message, message_is_error, rows })
}

fn catalog_page(shared: &Shared, frame: Frame, name: &str, query: &[(String, String)]) -> Response<Body> {
    let Ok(catalog) = CatalogName::new(name) else { return error(StatusCode::BAD_REQUEST, "malformed catalog name") };
    let search = field(query, "q").unwrap_or_default().trim().to_owned();
    let m = shared.lock();
    let Some(artifacts) = m.artifacts(&catalog) else { return error(StatusCode::NOT_FOUND, format!("no catalog named `{catalog}`")) };
    let wanted = page_number(field(query, "page"));
    // One pass: count the matches, keep only the page's rows.
    let mut matched = 0;
    let mut rows = Vec::new();
    for a in artifacts.filter(|a| search.is_empty() || a.path.as_str().contains(search.as_str())) {
        if matched / PAGE == wanted {
            let digest = a.digest().to_hex();
            rows.push(ArtifactRow { path: a.path.to_string(), size: bytes(a.size()), digest_short: digest[..12].to_owned(), digest, tags: a.tags.join(", ") });
        }
        matched += 1;
    }
    let (page, pages) = paging(Some(&wanted.to_string()), matched);
    let conflicts = m
        .conflicts()
        .into_iter()
        .filter(|c| c.catalog == catalog)
        .take(PAGE)
        .map(|c| ConflictRow {
            path: c.path.to_string(),
            winner: c.winner.to_hex(),
            losers: c.losers.iter().map(|l| format!("{} (from {})", l.digest.to_hex(), short(&l.origin.to_string()))).collect::<Vec<_>>().join("; "),
        })
        .collect();
    drop(m);
    let query_url = percent_encoding::utf8_percent_encode(&search, percent_encoding::NON_ALPHANUMERIC).to_string();
    let Frame { logged_in, csrf, message, message_is_error } = frame;
    page_of(&CatalogPage {
        logged_in,
        csrf,
        message,
        message_is_error,
        name: catalog.to_string(),
        query: search,
        query_url,
        matched,
        rows,
        page,
        pages,
        conflicts,
    })
}

fn hot_page(shared: &Shared, frame: Frame) -> Response<Body> {
    let now = shared.now();
    let (hot, expunges) = {
        let m = shared.lock();
        (m.hottest(20, now), m.expunges_pending())
    };
    let top = hot.iter().map(|h| h.rate).fold(0.0_f64, f64::max).max(f64::MIN_POSITIVE);
    let rows = hot
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let names = h.names.join(", ");
            let mut label: String = names.chars().take(34).collect();
            if names.chars().count() > 34 {
                label.push('…');
            }
            HotRow {
                label,
                names,
                rate: format!("{:.2}", h.rate),
                extra: h.extra_replicas,
                digest: h.digest.to_hex(),
                y: i * 24 + 4,
                bar: ((h.rate / top) * 400.0).round() as usize,
            }
        })
        .collect::<Vec<_>>();
    let chart_height = rows.len() * 24 + 8;
    let expunges = expunges.into_iter().take(PAGE).map(|e| (e.digest.to_hex(), e.pending.len())).collect();
    let Frame { logged_in, csrf, message, message_is_error } = frame;
    page_of(&HotPage { logged_in, csrf, message, message_is_error, rows, chart_width: 740, chart_height, expunges })
}

fn events_page(shared: &Shared, frame: Frame) -> Response<Body> {
    let (kept, _) = shared.events.since(0);
    let last = kept.last().map_or(0, |n| n.seq);
    let rows = kept
        .iter()
        .rev()
        .take(PAGE * 2)
        .map(|n| {
            let mut detail = serde_json::to_value(&**n).unwrap_or_default();
            if let Some(map) = detail.as_object_mut() {
                for k in ["seq", "time_ms", "kind"] {
                    map.remove(k);
                }
            }
            let detail = detail
                .as_object()
                .map(|m| m.iter().map(|(k, v)| format!("{k}={}", v.as_str().map_or_else(|| v.to_string(), str::to_owned))).collect::<Vec<_>>().join(" "))
                .unwrap_or_default();
            EventRow { kind: n.kind(), time: rfc3339(n.time_ms), detail }
        })
        .collect();
    let Frame { logged_in, csrf, message, message_is_error } = frame;
    page_of(&EventsPage { logged_in, csrf, message, message_is_error, rows, last })
}

fn audit_page(shared: &Shared, frame: Frame, query: &[(String, String)]) -> Response<Body> {
    let before = field(query, "before").and_then(|b| b.parse::<u64>().ok()).filter(|b| *b > 0);
    let page = match shared.audit.page(PAGE as u32, before) {
        Ok(p) => p,
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, format!("cannot read the audit log: {e}")),
    };
    let rows = page
        .entries
        .into_iter()
        .map(|e| AuditRow {
            id: e.id,
            time: rfc3339(e.time_ms),
            who: e.who,
            action: e.action,
            target: e.target,
            detail: e.detail,
            client: e.client,
            outcome: if e.error.is_empty() { e.status.to_string() } else { format!("{}: {}", e.status, e.error) },
        })
        .collect();
    let Frame { logged_in, csrf, message, message_is_error } = frame;
    page_of(&AuditPage { logged_in, csrf, message, message_is_error, rows, before: before.unwrap_or(0), next: page.next_before.unwrap_or(0) })
}

/// `1_500_000` → `1.4 MiB`.
fn bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{n} B") } else { format!("{value:.1} {}", UNITS[unit]) }
}

fn short(id: &str) -> String {
    id.chars().take(12).collect()
}

/// Unix milliseconds as `2026-12-02T13:44:36Z`.
fn rfc3339(ms: u64) -> String {
    let (year, month, day, h, m, s) = odi_core::time::UnixTime(ms / 1000).civil();
    format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}Z")
}

fn page_number(raw: Option<&str>) -> usize {
    raw.and_then(|p| p.parse().ok()).unwrap_or(0)
}

/// The page asked for (clamped to the last) and the number of pages, for `total` rows.
fn paging(raw: Option<&str>, total: usize) -> (usize, usize) {
    let pages = total.div_ceil(PAGE).max(1);
    (page_number(raw).min(pages - 1), pages)
}

fn field<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
    fields.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// `application/x-www-form-urlencoded` (a form body, or a query string).
fn form_fields(raw: &[u8]) -> Vec<(String, String)> {
    let decode = |s: &[u8]| {
        let plus: Vec<u8> = s.iter().map(|&b| if b == b'+' { b' ' } else { b }).collect();
        percent_encoding::percent_decode(&plus).decode_utf8_lossy().into_owned()
    };
    raw.split(|&b| b == b'&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| match kv.iter().position(|&b| b == b'=') {
            Some(eq) => (decode(&kv[..eq]), decode(&kv[eq + 1..])),
            None => (decode(kv), String::new()),
        })
        .collect()
}

#[allow(clippy::result_large_err, reason = "the error is the response to send")]
async fn read_form(req: Request<Incoming>) -> Result<Vec<(String, String)>, Response<Body>> {
    let limited = http_body_util::Limited::new(req.into_body(), MAX_FORM);
    match limited.collect().await {
        Ok(body) => Ok(form_fields(&body.to_bytes())),
        Err(_) => Err(error(StatusCode::PAYLOAD_TOO_LARGE, format!("form larger than {MAX_FORM} bytes, or cut short"))),
    }
}

fn session_cookie(req: &Request<Incoming>) -> Option<String> {
    req.headers()
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| c.trim().strip_prefix(COOKIE)?.strip_prefix('=').map(str::to_owned))
}

fn see_other(location: &str) -> Response<Body> {
    let mut resp = Response::new(full(Bytes::new()));
    *resp.status_mut() = StatusCode::SEE_OTHER;
    if let Ok(v) = HeaderValue::from_str(location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

fn page_of(template: &impl Template) -> Response<Body> {
    match template.render() {
        Ok(html) => {
            let mut resp = Response::new(full(Bytes::from(html)));
            let h = resp.headers_mut();
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
            h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            h.insert("x-frame-options", HeaderValue::from_static("DENY"));
            h.insert(
                "content-security-policy",
                HeaderValue::from_static("default-src 'self'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; frame-ancestors 'none'"),
            );
            resp
        }
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, format!("cannot render the page: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_decode_plus_and_percent() {
        let f = form_fields(b"path=a%2Fb+c.iso&tag=stable&empty");
        assert_eq!(field(&f, "path"), Some("a/b c.iso"));
        assert_eq!(field(&f, "tag"), Some("stable"));
        assert_eq!(field(&f, "empty"), Some(""));
        assert_eq!(field(&f, "missing"), None);
    }

    #[test]
    fn pages_are_clamped_and_never_zero() {
        assert_eq!(paging(None, 0), (0, 1));
        assert_eq!(paging(Some("5"), 250), (2, 3));
        assert_eq!(paging(Some("x"), 250), (0, 3));
    }

    #[test]
    fn times_and_sizes_read_as_people_write_them() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_796_219_076_000), "2026-12-02T13:44:36Z");
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1_572_864), "1.5 MiB");
    }
}
