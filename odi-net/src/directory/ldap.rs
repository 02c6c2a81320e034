//! Named admins checked against LDAP (`--ldap-url`, `--ldap-bind-dn`, `--ldap-admin-group`): a
//! user name and password are good when a simple bind as the templated DN (`{user}` replaced by
//! the name, escaped per RFC 4514) succeeds, and the user is an admin when the admin group's
//! entry lists that DN in `member` or `uniqueMember`. Successful checks are remembered for
//! [`CACHE_TTL`], keyed by a hash of the name and password, so a loop of CLI calls binds once.
//! An unreachable server refuses everyone with a reason (503), never lets anyone in.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ldap3::{LdapConnAsync, LdapConnSettings, Scope};
use sha2::{Digest as _, Sha256};

use http::header::{self, HeaderValue};
use http::{Response, StatusCode};

use super::Shared;
use crate::http::{Body, error};

/// How long a successful check holds without asking the server again.
pub(super) const CACHE_TTL: Duration = Duration::from_secs(60);
/// Connecting and each operation must finish within this.
const TIMEOUT: Duration = Duration::from_secs(5);
/// Cached logins kept at most.
const MAX_CACHED: usize = 4096;

/// Where and how to check named admins.
#[derive(Clone, Debug)]
pub struct LdapOptions {
    /// `ldap://HOST:PORT`.
    pub url: String,
    /// The DN to bind as, with `{user}` where the user name goes.
    pub bind_dn: String,
    /// The DN of the group whose members are admins.
    pub admin_group: String,
}

impl LdapOptions {
    /// Checks the options an operator gave, in one line.
    pub fn check(&self) -> Result<(), String> {
        if !self.url.starts_with("ldap://") {
            return Err(format!("--ldap-url `{}` must start with ldap:// (run the LDAP server on a trusted network or loopback)", self.url));
        }
        if !self.bind_dn.contains("{user}") {
            return Err(format!("--ldap-bind-dn `{}` must contain {{user}}, e.g. uid={{user}},ou=people,dc=example,dc=org", self.bind_dn));
        }
        if self.admin_group.trim().is_empty() {
            return Err("--ldap-admin-group must name the admins' group DN".to_owned());
        }
        Ok(())
    }
}

/// Why a login was refused.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum LdapRefusal {
    /// Wrong user name or password.
    Credentials,
    /// The user is not in the admin group.
    NotAdmin,
    /// The server could not answer: nobody gets in.
    Unavailable(String),
}

pub(super) struct Ldap {
    options: LdapOptions,
    cache: Mutex<HashMap<[u8; 32], Instant>>,
}

impl Ldap {
    pub(super) fn new(options: LdapOptions) -> Self {
        Self { options, cache: Mutex::new(HashMap::new()) }
    }

    /// The DN `user` binds as.
    pub(super) fn dn_of(&self, user: &str) -> String {
        self.options.bind_dn.replace("{user}", &ldap3::dn_escape(user))
    }

    fn key(user: &str, password: &str) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update((user.len() as u64).to_le_bytes());
        h.update(user.as_bytes());
        h.update(password.as_bytes());
        h.finalize().into()
    }

    /// Whether `user` with `password` is an admin.
    pub(super) async fn check(&self, user: &str, password: &str) -> Result<(), LdapRefusal> {
        // An empty password would be an unauthenticated bind, which servers accept.
        if user.is_empty() || password.is_empty() || user.len() > 256 || password.len() > 1024 {
            return Err(LdapRefusal::Credentials);
        }
        let key = Self::key(user, password);
        let now = Instant::now();
        {
            let mut cache = self.cache.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            match cache.get(&key) {
                Some(expires) if *expires > now => return Ok(()),
                Some(_) => {
                    cache.remove(&key);
                }
                None => {}
            }
        }
        match tokio::time::timeout(TIMEOUT * 3, self.ask(user, password)).await {
            Ok(Ok(())) => {}
            Ok(Err(refusal)) => return Err(refusal),
            Err(_) => return Err(LdapRefusal::Unavailable(format!("the LDAP server {} did not answer in time", self.options.url))),
        }
        let mut cache = self.cache.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        cache.retain(|_, expires| *expires > now);
        if cache.len() < MAX_CACHED {
            cache.insert(key, now + CACHE_TTL);
        }
        Ok(())
    }

    async fn ask(&self, user: &str, password: &str) -> Result<(), LdapRefusal> {
        let url = &self.options.url;
        let unavailable = |e: ldap3::LdapError| LdapRefusal::Unavailable(format!("the LDAP server {url} cannot be reached: {e}"));
        let settings = LdapConnSettings::new().set_conn_timeout(TIMEOUT);
        let (conn, mut ldap) = LdapConnAsync::with_settings(settings, url).await.map_err(unavailable)?;
        ldap3::drive!(conn);
        ldap.with_timeout(TIMEOUT);
        let dn = self.dn_of(user);
        let bound = ldap.simple_bind(&dn, password).await.map_err(unavailable)?;
        match bound.rc {
            0 => {}
            // invalidCredentials, and inappropriateAuthentication for entries without a password.
            49 | 48 | 32 | 34 => return Err(LdapRefusal::Credentials),
            rc => return Err(LdapRefusal::Unavailable(format!("the LDAP server {url} refused the bind: rc={rc} {}", bound.text))),
        }
        let escaped = ldap3::ldap_escape(dn.as_str());
        let filter = format!("(|(member={escaped})(uniqueMember={escaped}))");
        ldap.with_timeout(TIMEOUT);
        let found = ldap.search(&self.options.admin_group, Scope::Base, &filter, vec!["1.1"]).await.map_err(unavailable)?;
        let result = match found.success() {
            Ok((entries, _)) => Ok(!entries.is_empty()),
            // noSuchObject: no such group, so nobody is in it.
            Err(ldap3::LdapError::LdapResult { result }) if result.rc == 32 => {
                tracing::warn!(group = %self.options.admin_group, "the LDAP admin group does not exist; no named user is an admin");
                Ok(false)
            }
            Err(e) => Err(unavailable(e)),
        };
        let _ = ldap.unbind().await;
        match result? {
            true => Ok(()),
            false => Err(LdapRefusal::NotAdmin),
        }
    }
}

/// Checks a named admin's login from `client`, with the admin API's guessing limit: over the
/// limit nothing is checked, and a wrong password or a non-admin counts against the address.
/// `Err` is the status and the one-line reason to answer with.
pub(super) async fn login(shared: &Shared, client: Option<IpAddr>, user: &str, password: &str) -> Result<String, (StatusCode, String)> {
    let Some(ldap) = &shared.ldap else {
        return Err((StatusCode::UNAUTHORIZED, "this directory has no named admins (no --ldap-url); use the admin token".to_owned()));
    };
    if let Some(Err(wait)) = client.map(|ip| shared.admin_failures.check(ip)) {
        return Err((StatusCode::TOO_MANY_REQUESTS, format!("too many failed logins from this address; try again in {}s", wait.as_secs().max(1))));
    }
    let refusal = match ldap.check(user, password).await {
        Ok(()) => return Ok(user.to_owned()),
        Err(r) => r,
    };
    if let Some(ip) = client.filter(|_| !matches!(refusal, LdapRefusal::Unavailable(_))) {
        shared.admin_failures.failed(ip);
    }
    Err(match refusal {
        LdapRefusal::Credentials => (StatusCode::UNAUTHORIZED, "wrong user name or password".to_owned()),
        LdapRefusal::NotAdmin => (StatusCode::FORBIDDEN, format!("user `{user}` is not in the admin group")),
        LdapRefusal::Unavailable(why) => {
            tracing::warn!(reason = %why, "a named admin's login could not be checked");
            (StatusCode::SERVICE_UNAVAILABLE, format!("cannot check the login: {why}"))
        }
    })
}

/// `Authorization: Basic {base64(user:password)}` on the admin API: the user's name, or the
/// answer refusing them.
#[allow(clippy::result_large_err, reason = "the error is the response to send, built once per refused request")]
pub(super) async fn basic(shared: &Shared, client: Option<IpAddr>, encoded: &str) -> Result<String, Response<Body>> {
    use base64::Engine as _;
    let decoded = base64::engine::general_purpose::STANDARD.decode(encoded).ok().and_then(|b| String::from_utf8(b).ok());
    let Some((user, password)) = decoded.as_deref().and_then(|d| d.split_once(':')) else {
        return Err(error(StatusCode::BAD_REQUEST, "malformed Basic credentials; expected base64(user:password)"));
    };
    login(shared, client, user, password).await.map_err(|(status, why)| {
        let mut resp = error(status, why);
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"odi\", charset=\"UTF-8\""));
        }
        if status == StatusCode::TOO_MANY_REQUESTS {
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(60u32));
        }
        resp
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ldap() -> Ldap {
        Ldap::new(LdapOptions { url: "ldap://127.0.0.1:1".into(), bind_dn: "uid={user},ou=people,dc=x".into(), admin_group: "cn=a,dc=x".into() })
    }

    #[test]
    fn user_names_cannot_reach_outside_their_dn() {
        assert_eq!(ldap().dn_of("alice"), "uid=alice,ou=people,dc=x");
        let dn = ldap().dn_of("a,ou=admins");
        assert!(dn.starts_with("uid=a\\") && !dn.contains(",ou=admins") && dn.ends_with(",ou=people,dc=x"), "{dn}");
    }

    #[tokio::test]
    async fn no_password_and_no_server_let_nobody_in() {
        assert_eq!(ldap().check("alice", "").await, Err(LdapRefusal::Credentials));
        assert!(matches!(ldap().check("alice", "pw").await, Err(LdapRefusal::Unavailable(_))));
    }

    #[test]
    fn options_say_what_is_wrong() {
        let mut o = ldap().options;
        assert!(o.check().is_ok());
        o.bind_dn = "cn=admin".into();
        assert!(o.check().unwrap_err().contains("{user}"));
        o.url = "http://x".into();
        assert!(o.check().unwrap_err().contains("ldap://"));
    }
}
