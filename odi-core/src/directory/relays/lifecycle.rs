//! A relay's lifecycle, as one value: what the directory decided about it (durable, in its
//! record) and what it saw of it since it started, in the order that decides its status.

use crate::message::RelayStatus;

/// Where a relay is in its life. The durable part (quarantine, draining, proven) is the
/// directory's decision, kept in the relay's record; the rest (heard from within the lease,
/// tested, suspended) is what the directory saw since it started. [`RelayStatus`] and the
/// reason a relay is told both derive from it.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub(super) enum Lifecycle<'a> {
    /// Served wrong bytes, or its operator's token was revoked: nothing until an admin readmits it.
    Quarantined { reason: &'a str },
    /// Silent for longer than the lease (or not heard from since the directory started).
    Lost,
    /// Enrolled, returned or readmitted, and not yet through a self-test.
    Testing,
    /// Failed a health check or an audit fetch: no clients until a self-test passes.
    Suspended,
    /// An admin drains it: no new work; clients go elsewhere once others hold its artifacts.
    Draining,
    /// Serves only clients that verify what they get, until its probation ends.
    Probation,
    /// Proven: plain clients may be sent to it.
    Serving,
}

impl Lifecycle<'_> {
    /// The status a relay is shown with; `syncing` when its assignment is not all held yet.
    pub(super) fn status(self, syncing: bool) -> RelayStatus {
        match self {
            Self::Quarantined { .. } => RelayStatus::Quarantined,
            Self::Lost => RelayStatus::Unhealthy,
            Self::Testing => RelayStatus::Enrolled,
            Self::Suspended => RelayStatus::Suspended,
            Self::Draining => RelayStatus::Draining,
            Self::Probation | Self::Serving if syncing => RelayStatus::Syncing,
            Self::Probation | Self::Serving => RelayStatus::Ready,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_serving_stages_sync_and_each_stage_has_its_status() {
        let stages = [
            (Lifecycle::Quarantined { reason: "lied" }, RelayStatus::Quarantined),
            (Lifecycle::Lost, RelayStatus::Unhealthy),
            (Lifecycle::Testing, RelayStatus::Enrolled),
            (Lifecycle::Suspended, RelayStatus::Suspended),
            (Lifecycle::Draining, RelayStatus::Draining),
            (Lifecycle::Probation, RelayStatus::Ready),
            (Lifecycle::Serving, RelayStatus::Ready),
        ];
        for (stage, status) in stages {
            assert_eq!(stage.status(false), status, "{stage:?}");
            let syncing = if status == RelayStatus::Ready { RelayStatus::Syncing } else { status };
            assert_eq!(stage.status(true), syncing, "{stage:?} with work still to fetch");
        }
    }
}
