//! A metadata store that fails on demand, for testing what a directory does when its disk or
//! database refuses writes (it must never acknowledge what it could not save).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use async_trait::async_trait;
use odi_core::storage::{Changes, Cursor, MetaStore, Record, Result, StorageError};

/// Turns a [`FaultyMeta`]'s failures on and off from outside, while the store is in use.
#[derive(Clone, Debug, Default)]
pub struct FaultSwitch {
    failing: Arc<AtomicBool>,
    refused: Arc<AtomicU64>,
}

impl FaultSwitch {
    /// From now on every write fails (`true`) or goes through (`false`).
    pub fn set_failing(&self, failing: bool) {
        self.failing.store(failing, Ordering::SeqCst);
    }

    /// Writes refused so far.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::SeqCst)
    }
}

/// Wraps a [`MetaStore`]; while its [`FaultSwitch`] is on, `apply` fails and writes nothing.
/// `load` always goes through.
#[derive(Debug)]
pub struct FaultyMeta<M> {
    inner: M,
    switch: FaultSwitch,
}

impl<M: MetaStore> FaultyMeta<M> {
    pub fn new(inner: M) -> (Self, FaultSwitch) {
        let switch = FaultSwitch::default();
        (Self { inner, switch: switch.clone() }, switch)
    }
}

#[async_trait]
impl<M: MetaStore> MetaStore for FaultyMeta<M> {
    async fn load(&self) -> Result<Vec<Record>> {
        self.inner.load().await
    }

    async fn apply(&self, records: &[Record]) -> Result<()> {
        if self.switch.failing.load(Ordering::SeqCst) {
            self.switch.refused.fetch_add(1, Ordering::SeqCst);
            return Err(StorageError::backend("faulty metadata store", "write refused on purpose (fault injection)"));
        }
        self.inner.apply(records).await
    }

    async fn load_at(&self) -> Result<(Vec<Record>, Cursor)> {
        self.inner.load_at().await
    }

    async fn changes(&self, after: Cursor) -> Result<Changes> {
        self.inner.changes(after).await
    }

    async fn wait_for_changes(&self) {
        self.inner.wait_for_changes().await
    }

    fn is_shared(&self) -> bool {
        self.inner.is_shared()
    }
}
