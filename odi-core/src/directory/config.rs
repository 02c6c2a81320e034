//! How a directory is configured.

use std::time::Duration;

use super::HotConfig;
use crate::message::{AddressPolicy, NodeId};

/// A new relay's probation: long enough for hundreds of audits at the default interval, short
/// enough that a volunteer sees plain-client traffic the day they join.
pub const DEFAULT_PROBATION: Duration = Duration::from_secs(6 * 3600);

/// Everything a `Directory` is told at start: its id, its timers, the rules for admitting
/// relays, and how work is placed.
#[derive(Clone, Debug)]
pub struct DirectoryConfig {
    /// This directory's node id (its public key).
    pub id: NodeId,
    /// How often relays are told to heartbeat.
    pub heartbeat_interval: Duration,
    /// A relay silent this long is unhealthy: no redirects, no assignment.
    pub lease: Duration,
    /// A failed self-test is retried after this long.
    pub self_test_retry: Duration,
    /// How often each serving relay's public URL is checked again.
    pub probe_interval: Duration,
    /// How often each serving relay gets a content audit (one whole chunk).
    pub audit_interval: Duration,
    /// How long a newly admitted (or readmitted) relay serves only clients that verify what they
    /// get (it is named in `Link: rel=duplicate` and metalinks, never in a `Location`), and the
    /// clean audits it must pass meanwhile. Zero turns probation off.
    pub probation: Duration,
    /// Clean audits a relay on probation must pass, besides serving `probation`, before plain
    /// clients are sent to it.
    pub probation_audits: u64,
    /// Keys never seen before that may enroll per minute (a flood of fake relays waits).
    pub new_relays_per_minute: u32,
    /// Check one chunk of every artifact a relay newly reports holding, asked as a client would,
    /// before plain clients are sent to it for that artifact.
    pub check_possession: bool,
    /// A relay not heard from this long is forgotten (its record deleted), unless quarantined:
    /// a quarantine is kept, as it binds the relay's host.
    pub forget_after: Duration,
    /// A change to the set of relays is rebalanced this long after it, so that many changes
    /// (relays joining after a restart) cost one recomputation. New artifacts are placed at once.
    pub rebalance_delay: Duration,
    /// Placement work per slice of a rebalance (an artifact placed counts 64), between which
    /// the driver may serve.
    pub rebalance_slice: usize,
    /// How request rates earn an artifact extra replicas.
    pub hot: HotConfig,
    /// Which relay URLs enrollment accepts (see [`AddressPolicy::for_directory`]).
    pub relay_addresses: AddressPolicy,
    /// Key of the HMAC-SHA256 under which token hashes are stored, so that a copy of the store
    /// alone does not allow guessing a token offline. The driver keeps it in a 0600 file.
    pub token_key: [u8; 32],
    /// Several processes of this directory share its store: every heartbeat taken is also
    /// written (batched, as [`Record::Heard`](crate::storage::Record)) for the other processes,
    /// which apply it as their own, so that every process knows every relay's liveness and
    /// holdings whichever process it talks to.
    pub share_heartbeats: bool,
}

impl DirectoryConfig {
    /// The defaults, for the directory whose node id is `id`. `token_key` is all zeros: the
    /// driver puts the key it keeps on disk there before it starts the directory.
    pub fn new(id: NodeId) -> Self {
        Self {
            id,
            heartbeat_interval: Duration::from_secs(5),
            lease: Duration::from_secs(15),
            self_test_retry: Duration::from_secs(5),
            probe_interval: Duration::from_secs(10),
            audit_interval: Duration::from_secs(30),
            probation: DEFAULT_PROBATION,
            probation_audits: 3,
            new_relays_per_minute: 60,
            check_possession: true,
            forget_after: Duration::from_secs(30 * 24 * 3600),
            rebalance_delay: Duration::from_millis(250),
            rebalance_slice: 2_000_000,
            hot: HotConfig::default(),
            relay_addresses: AddressPolicy::PUBLIC,
            token_key: [0; 32],
            share_heartbeats: false,
        }
    }
}
