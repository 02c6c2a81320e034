//! Enrollment and admin tokens: the directory's own token per role, and named enrollment tokens,
//! one per relay operator, that an admin hands out and can revoke. Only keyed hashes are kept.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::digest::Digest;
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
    /// No token the directory knows.
    Wrong,
}

/// A named token as admins see it.
#[derive(Clone, Debug, Serialize)]
pub struct TokenView {
    pub name: String,
    pub created_at: UnixTime,
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

    /// Which enrollment token `hash` is (compared in constant time against each).
    pub(super) fn admit(&self, hash: &Digest) -> Admission {
        let mut found = Admission::Wrong;
        if self.roles.get(&TokenRole::Enroll).is_some_and(|h| constant_time_eq(h.as_bytes(), hash.as_bytes())) {
            found = Admission::Default;
        }
        for t in self.named.values() {
            if constant_time_eq(t.hash.as_bytes(), hash.as_bytes()) {
                found = if t.revoked { Admission::Revoked(t.name.clone()) } else { Admission::Named(t.name.clone()) };
            }
        }
        found
    }

    pub(super) fn views(&self, relays: impl Fn(&str) -> usize) -> Vec<TokenView> {
        self.named.values().map(|t| TokenView { name: t.name.clone(), created_at: t.created_at, revoked: t.revoked, relays: relays(&t.name) }).collect()
    }
}

pub(super) fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(name: &str, n: u8, revoked: bool) -> EnrollTokenRecord {
        EnrollTokenRecord { name: name.into(), hash: Digest::from_bytes([n; 32]), created_at: UnixTime(0), revoked }
    }

    #[test]
    fn tokens_are_recognised_by_hash_and_revocation_is_reported() {
        let mut t = Tokens::default();
        t.set_role(TokenRole::Enroll, Digest::from_bytes([1; 32]));
        t.apply_named(&record("alice", 2, false));
        t.apply_named(&record("bob", 3, true));
        assert_eq!(t.admit(&Digest::from_bytes([1; 32])), Admission::Default);
        assert_eq!(t.admit(&Digest::from_bytes([2; 32])), Admission::Named("alice".into()));
        assert_eq!(t.admit(&Digest::from_bytes([3; 32])), Admission::Revoked("bob".into()));
        assert_eq!(t.admit(&Digest::from_bytes([4; 32])), Admission::Wrong);
        let views = t.views(|name| usize::from(name == "alice"));
        assert_eq!(views.iter().map(|v| (v.name.as_str(), v.revoked, v.relays)).collect::<Vec<_>>(), [("alice", false, 1), ("bob", true, 0)]);
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
