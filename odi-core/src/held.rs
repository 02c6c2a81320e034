//! The digest of a relay's held set, which heartbeats that carry only what changed
//! ([`HeldDelta`](crate::message::HeldDelta)) name their base and result by.
//!
//! It is order-free and follows the set, not its history: a 256-bit sum (mod 2^256) of one term
//! per held digest, so adding or removing a digest costs one addition, and the relay and the
//! directory, each from its own copy of the set, arrive at the same value exactly when the two
//! copies agree (but for a collision, which would take one set of SHA-256 outputs to sum to
//! another's). Each term is the digest read as four little-endian 64-bit words, each passed
//! through the SplitMix64 finalizer (a bijection), so that sets of patterned values, as tests
//! use, do not sum alike. The value on the wire is the SHA-256 of `odi-held-v1\n` and the sum's
//! 32 little-endian bytes ([`HeldSum::digest`]).

use crate::digest::Digest;

/// A running sum over a set of digests: add each one that joins, remove each one that leaves.
#[derive(Clone, Copy, Debug, Default, Eq, PartialEq)]
pub struct HeldSum([u64; 4]);

impl HeldSum {
    /// The sum over `digests` (each counted as often as it occurs: pass a set).
    pub fn of<'a>(digests: impl IntoIterator<Item = &'a Digest>) -> Self {
        let mut sum = Self::default();
        for d in digests {
            sum.add(d);
        }
        sum
    }

    /// `digest` joined the set.
    pub fn add(&mut self, digest: &Digest) {
        let mut carry = false;
        for (limb, x) in self.0.iter_mut().zip(term(digest)) {
            let (v, c1) = limb.overflowing_add(x);
            let (v, c2) = v.overflowing_add(u64::from(carry));
            *limb = v;
            carry = c1 || c2;
        }
    }

    /// `digest` left the set.
    pub fn remove(&mut self, digest: &Digest) {
        let mut borrow = false;
        for (limb, x) in self.0.iter_mut().zip(term(digest)) {
            let (v, b1) = limb.overflowing_sub(x);
            let (v, b2) = v.overflowing_sub(u64::from(borrow));
            *limb = v;
            borrow = b1 || b2;
        }
    }

    /// The value heartbeats carry for the set: SHA-256 of `odi-held-v1\n` and the sum.
    pub fn digest(&self) -> Digest {
        let mut bytes = Vec::with_capacity(12 + 32);
        bytes.extend_from_slice(b"odi-held-v1\n");
        for limb in self.0 {
            bytes.extend_from_slice(&limb.to_le_bytes());
        }
        Digest::of(&bytes)
    }
}

/// One digest's term: its four little-endian words, each through the SplitMix64 finalizer.
fn term(digest: &Digest) -> [u64; 4] {
    let b = digest.as_bytes();
    std::array::from_fn(|i| {
        let mut z = u64::from_le_bytes(b[i * 8..i * 8 + 8].try_into().expect("8 of 32 bytes"));
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(n: u8) -> Digest {
        Digest::from_bytes([n; 32])
    }

    #[test]
    fn the_sum_follows_the_set_not_its_history() {
        let all = [d(1), d(2), d(3), d(200)];
        let forward = HeldSum::of(&all);
        let backward = HeldSum::of(all.iter().rev());
        assert_eq!(forward, backward, "order-free");
        let mut s = HeldSum::default();
        for x in &all {
            s.add(x);
        }
        s.add(&d(9));
        s.remove(&d(2));
        s.remove(&d(9));
        s.add(&d(2));
        assert_eq!(s, forward, "adding and removing returns to the same value");
        s.remove(&d(200));
        assert_ne!(s.digest(), forward.digest());
        assert_eq!(HeldSum::of(&[]).digest(), HeldSum::default().digest(), "the empty set has one name");
    }

    /// Relays and directories from before deltas: their messages parse, and a new relay's
    /// whole report and a new directory's answer to an old relay look as they did.
    #[test]
    fn messages_without_deltas_are_as_before() {
        use crate::message::{Heartbeat, HeartbeatAck, HeldDelta, Message};
        let old_relay = format!(r#"{{"type":"heartbeat","generation":3,"held":["{}"],"used":10}}"#, d(1));
        let Message::Heartbeat(hb) = serde_json::from_str(&old_relay).unwrap() else { panic!("a heartbeat") };
        assert_eq!((hb.held, hb.delta), (vec![d(1)], None));
        let old_directory = r#"{"type":"heartbeat_ack","generation":3,"state":null}"#;
        let Message::HeartbeatAck(ack) = serde_json::from_str(old_directory).unwrap() else { panic!("an ack") };
        assert_eq!(ack.held, None);
        let whole = Heartbeat { generation: 3, held: vec![d(1)], used: 10, active: 0, delta: None };
        let json = serde_json::to_string(&Message::Heartbeat(whole)).unwrap();
        assert!(!json.contains("delta"), "{json}");
        let ack = HeartbeatAck { generation: 3, state: None, expunged: Vec::new(), standing: None, heads: Vec::new(), held: None };
        assert!(!serde_json::to_string(&ack).unwrap().contains("held"));

        let delta = HeldDelta { base: HeldSum::of(&[d(1)]).digest(), added: vec![d(2)], removed: vec![d(1)], digest: HeldSum::of(&[d(2)]).digest() };
        let hb = Message::Heartbeat(Heartbeat { generation: 3, held: Vec::new(), used: 10, active: 0, delta: Some(delta) });
        assert_eq!(serde_json::from_str::<Message>(&serde_json::to_string(&hb).unwrap()).unwrap(), hb);
    }

    #[test]
    fn patterned_digests_do_not_sum_alike() {
        // As plain 256-bit numbers [1;32] + [4;32] = [2;32] + [3;32]; the terms are mixed first.
        assert_ne!(HeldSum::of(&[d(1), d(4)]), HeldSum::of(&[d(2), d(3)]));
        // Carries cross limbs: a sum that wraps still subtracts back to where it was.
        let mut s = HeldSum::of(&[d(0xff), d(0xfe), d(0xfd)]);
        let before = s;
        s.add(&d(0xff - 3));
        s.remove(&d(0xff - 3));
        assert_eq!(s, before);
    }
}
