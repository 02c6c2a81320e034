//! Enrollment and admin tokens: the directory's own token per role, and named tokens that an
//! admin hands out and can revoke: enrollment tokens, one per relay operator (optionally good for
//! one relay only), and publisher tokens scoped to one catalog. Only keyed hashes are kept.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::message::NodeId;
use crate::path::CatalogName;
use crate::storage::{EnrollTokenRecord, TokenRole};
use crate::time::UnixTime;

/// How an enrollment token was recognised.
#[derive(Clone, Debug, Eq, PartialEq)]
pub(super) enum Admission {
    /// The directory's own enrollment token.
    Default,
    /// A named token, still valid.
    Named(String),
    /// A named token an admin revoked.
    Revoked(String),
    /// A single-use token another relay enrolled with.
    Used { name: String, by: NodeId },
    /// No token the directory knows.
    Wrong,
}

/// A named token as admins see it.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct TokenView {
    /// What an admin types to revoke it: 1 to 64 letters, digits, `-`, `_`, `.` or `@`.
    pub name: String,
    /// `enroll` or `publish`.
    pub role: String,
    /// The catalog a publisher's token may publish to.
    pub catalog: Option<CatalogName>,
    /// Good for one relay only: the first to enroll with it (which may enroll again).
    pub single_use: bool,
    /// The relay a single-use token enrolled.
    pub used_by: Option<NodeId>,
    /// When an admin made it.
    pub created_at: UnixTime,
    /// Revoked by an admin: it enrolls and publishes nothing, and a relay that offers it is told so.
    pub revoked: bool,
    /// Relays enrolled with it.
    pub relays: usize,
}

#[derive(Debug, Default)]
pub(super) struct Tokens {
    roles: BTreeMap<TokenRole, Digest>,
    named: BTreeMap<String, EnrollTokenRecord>,
}

/// A name an operator's token can have: what an admin types, shown in tables and logs.
pub(super) fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'@'))
}

impl Tokens {
    pub(super) fn role(&self, role: TokenRole) -> Option<&Digest> {
        self.roles.get(&role)
    }

    pub(super) fn set_role(&mut self, role: TokenRole, hash: Digest) {
        self.roles.insert(role, hash);
    }

    pub(super) fn named(&self, name: &str) -> Option<&EnrollTokenRecord> {
        self.named.get(name)
    }

    pub(super) fn apply_named(&mut self, record: &EnrollTokenRecord) {
        self.named.insert(record.name.clone(), record.clone());
    }

    /// Which enrollment token `hash` is, for an enrollment by relay `from` (compared in
    /// constant time against each). Publisher tokens enroll nothing.
    pub(super) fn admit(&self, hash: &Digest, from: Option<&NodeId>) -> Admission {
        let mut found = Admission::Wrong;
        if self.roles.get(&TokenRole::Enroll).is_some_and(|h| constant_time_eq(h.as_bytes(), hash.as_bytes())) {
            found = Admission::Default;
        }
        for t in self.named.values() {
            if constant_time_eq(t.hash.as_bytes(), hash.as_bytes()) && t.catalog.is_none() {
                found = match (t.revoked, t.used_by) {
                    (true, _) => Admission::Revoked(t.name.clone()),
                    (false, Some(by)) if t.single_use && from.is_some_and(|f| *f != by) => Admission::Used { name: t.name.clone(), by },
                    _ => Admission::Named(t.name.clone()),
                };
            }
        }
        found
    }

    /// The catalog a publisher's token `hash` may publish to, if it is one and not revoked.
    pub(super) fn publisher_name(&self, hash: &Digest) -> Option<&str> {
        let mut found = None;
        for t in self.named.values() {
            if constant_time_eq(t.hash.as_bytes(), hash.as_bytes()) && !t.revoked && t.catalog.is_some() {
                found = Some(t.name.as_str());
            }
        }
        found
    }

    pub(super) fn publisher(&self, hash: &Digest) -> Option<&CatalogName> {
        let mut found = None;
        for t in self.named.values() {
            if constant_time_eq(t.hash.as_bytes(), hash.as_bytes()) && !t.revoked {
                found = t.catalog.as_ref().or(found);
            }
        }
        found
    }

    pub(super) fn views(&self, relays: impl Fn(&str) -> usize) -> Vec<TokenView> {
        self.named
            .values()
            .map(|t| TokenView {
                name: t.name.clone(),
                role: if t.catalog.is_some() { "publish" } else { "enroll" }.to_owned(),
                catalog: t.catalog.clone(),
                single_use: t.single_use,
                used_by: t.used_by,
                created_at: t.created_at,
                revoked: t.revoked,
                relays: relays(&t.name),
            })
            .collect()
    }
}

pub(super) fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(name: &str, n: u8, revoked: bool) -> EnrollTokenRecord {
        EnrollTokenRecord { revoked, ..EnrollTokenRecord::enroll(name, Digest::from_bytes([n; 32]), UnixTime(0)) }
    }

    #[test]
    fn tokens_are_recognised_by_hash_and_revocation_is_reported() {
        let mut t = Tokens::default();
        t.set_role(TokenRole::Enroll, Digest::from_bytes([1; 32]));
        t.apply_named(&record("alice", 2, false));
        t.apply_named(&record("bob", 3, true));
        assert_eq!(t.admit(&Digest::from_bytes([1; 32]), None), Admission::Default);
        assert_eq!(t.admit(&Digest::from_bytes([2; 32]), None), Admission::Named("alice".into()));
        assert_eq!(t.admit(&Digest::from_bytes([3; 32]), None), Admission::Revoked("bob".into()));
        assert_eq!(t.admit(&Digest::from_bytes([4; 32]), None), Admission::Wrong);
        let views = t.views(|name| usize::from(name == "alice"));
        assert_eq!(views.iter().map(|v| (v.name.as_str(), v.revoked, v.relays)).collect::<Vec<_>>(), [("alice", false, 1), ("bob", true, 0)]);
    }

    #[test]
    fn publisher_tokens_enroll_nothing_and_single_use_tokens_one_relay() {
        let mut t = Tokens::default();
        let alpha = CatalogName::new("alpha").unwrap();
        t.apply_named(&EnrollTokenRecord { catalog: Some(alpha.clone()), ..record("pub", 5, false) });
        assert_eq!(t.admit(&Digest::from_bytes([5; 32]), None), Admission::Wrong);
        assert_eq!(t.publisher(&Digest::from_bytes([5; 32])), Some(&alpha));
        assert_eq!(t.publisher(&Digest::from_bytes([6; 32])), None);
        t.apply_named(&EnrollTokenRecord { catalog: Some(alpha), ..record("pub", 5, true) });
        assert_eq!(t.publisher(&Digest::from_bytes([5; 32])), None, "revoked");
        let (a, b) = (NodeId([1; 32]), NodeId([2; 32]));
        t.apply_named(&EnrollTokenRecord { single_use: true, ..record("once", 6, false) });
        assert_eq!(t.admit(&Digest::from_bytes([6; 32]), Some(&a)), Admission::Named("once".into()));
        t.apply_named(&EnrollTokenRecord { single_use: true, used_by: Some(a), ..record("once", 6, false) });
        assert_eq!(t.admit(&Digest::from_bytes([6; 32]), Some(&a)), Admission::Named("once".into()), "the same relay again");
        assert_eq!(t.admit(&Digest::from_bytes([6; 32]), Some(&b)), Admission::Used { name: "once".into(), by: a });
    }

    #[test]
    fn names_are_short_and_plain() {
        for ok in ["alice", "mirror-team.de", "ops_2", "a@example.org"] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in ["", "a b", "x/y", "ü", &"n".repeat(65)] {
            assert!(!valid_name(bad), "{bad}");
        }
    }
}
