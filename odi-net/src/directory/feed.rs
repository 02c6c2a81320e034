//! The metadata store's change feed, consumed: what other processes of this directory applied
//! to the shared store (PostgreSQL) is applied to this process's machine, in the order it was
//! committed, so an admin change made through any process is seen by all.
//!
//! The feed's cursor lives inside the writer lock (`Shared::writer`): whoever plans an admin
//! change first takes the lock and catches up, so a plan is made on everything committed
//! before it (a publish through this process after one through another gets the next
//! sequence number, not the same one). Two plans that still race (made at the same moment in
//! two processes) collide in the store, which refuses the second whole (the log's primary key);
//! that caller gets a 503 and nothing changes. Between admin changes, `feed_loop` catches up
//! whenever the store signals a change (`LISTEN/NOTIFY`) and every [`POLL`] in case a signal
//! was lost. A store with one writer (SQLite) has no feed: both are no-ops there.

use std::sync::Arc;
use std::time::Duration;

use odi_core::storage::{Changes, Cursor, Record};
use tokio::sync::MutexGuard;

use super::Shared;
use super::effects::execute;
use crate::driver::Driver as _;

/// How often the feed is read without a wake-up from the store.
pub(super) const POLL: Duration = Duration::from_secs(2);

impl Shared {
    /// The writer lock, caught up with the feed: plan → persist → apply under it.
    pub(super) async fn write_lock(self: &Arc<Self>) -> MutexGuard<'_, Cursor> {
        let mut cursor = self.writer.lock().await;
        catch_up(self, &mut cursor).await;
        cursor
    }
}

/// Applies every change after `cursor` that other processes committed, and moves it past them.
/// A store that cannot be read now is tried again at the next call; the machine keeps what
/// it has.
pub(super) async fn catch_up(shared: &Arc<Shared>, cursor: &mut Cursor) {
    loop {
        let changes = match shared.meta.changes(*cursor).await {
            Ok(changes) => changes,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the metadata store's change feed; trying again");
                return;
            }
        };
        match changes {
            Changes::Records { records, cursor: next } => {
                let more = !records.is_empty();
                if more {
                    apply(shared, &records).await;
                }
                *cursor = next;
                if !more {
                    return;
                }
            }
            Changes::Reload => {
                // Further behind than the store keeps changes: read everything again. What
                // this machine has already applied is ignored (log entries it holds, catalogs
                // it knows) or the same again (relay records, tokens).
                match shared.meta.load_at().await {
                    Ok((records, at)) => {
                        tracing::warn!(records = records.len(), "the change feed was pruned past this process's position: reapplied every stored record");
                        apply(shared, &records).await;
                        *cursor = at;
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot reload the metadata store; trying again"),
                }
                return;
            }
        }
    }
}

/// Applies records another process made durable, then carries out what they set off.
///
/// Federation records stay with the process that wrote them: each process numbers its own
/// federation feed, so another's entries would collide with its own positions (and accepting
/// another's local entry as its own writes it again). A directory with links runs as one
/// process (see ARCHITECTURE.md, "Scale-out").
async fn apply(shared: &Arc<Shared>, records: &[Record]) {
    let (applied, effects) = shared.with_machine(|d, now| records.iter().filter(|r| !matches!(r, Record::Fed(_)) && d.apply(r, now)).count());
    tracing::debug!(records = records.len(), applied, "applied changes made through other processes");
    execute(shared, effects).await;
}

/// Follows the feed until the task is aborted (when the server stops).
pub(super) async fn feed_loop(shared: Arc<Shared>) {
    loop {
        tokio::select! {
            () = shared.meta.wait_for_changes() => {}
            () = tokio::time::sleep(POLL) => {}
        }
        let mut cursor = shared.writer.lock().await;
        catch_up(&shared, &mut cursor).await;
    }
}
