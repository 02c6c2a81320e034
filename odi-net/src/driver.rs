//! The skeleton the directory and relay drivers share: one sans-IO machine behind a mutex,
//! drained after every input, one timer re-armed at its deadline, and the HTTP accept loop.
//!
//! # The drain contract
//!
//! After every `handle_*` call or mutator, a driver drains the machine's `poll_effect` and
//! `poll_event` until both are empty, then re-arms its timer at `poll_timeout`. Nothing else
//! may touch the machine in between, or an effect or event would wait for the next input.
//!
//! [`Driver::with_machine`] is the way in that keeps the contract: under the lock it runs the
//! input, pops every effect (returned, for the caller to hand to [`Driver::execute`]), hands every
//! event to [`Driver::on_event`] in order; then it releases the lock and wakes [`timer_loop`],
//! which reads `poll_timeout` again before it sleeps. [`Driver::lock`] is for queries and for
//! bookkeeping calls that queue neither effect nor event (a redirect's demand counters, a
//! relay's count of answers in flight); those do not wake the timer.
//!
//! [`run`] serves a driver: the crate's accept loop ([`crate::serve`]: per-address connection
//! guards, TLS handshake deadline, header timeout, graceful shutdown) on a plain or TLS
//! [`crate::Listener`], with the timer loop beside it, stopped once the accept loop has wound
//! down.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use ::http::{Request, Response};
use ed25519_dalek::SigningKey;
use hyper::body::Incoming;
use odi_core::directory::Directory;
use odi_core::relay::Relay;
use odi_core::time::Instant;
use tokio::sync::{Notify, watch};

use crate::http::Body;
use crate::lock::DataDirLock;
use crate::{Clock, NetError, keys};

/// What a driver needs of an odi-core machine: its outputs, and its timer input.
pub(crate) trait Machine: Send + 'static {
    type Effect: Send;
    type Event;

    fn handle_timeout(&mut self, now: Instant);
    fn poll_effect(&mut self) -> Option<Self::Effect>;
    fn poll_event(&mut self) -> Option<Self::Event>;
    fn poll_timeout(&self) -> Option<Instant>;
}

/// The machines' own methods of those names, for a type from `$module` (`Effect`, `Event`).
macro_rules! machine {
    ($machine:ty, $module:ident) => {
        impl Machine for $machine {
            type Effect = odi_core::$module::Effect;
            type Event = odi_core::$module::Event;

            fn handle_timeout(&mut self, now: Instant) {
                <$machine>::handle_timeout(self, now);
            }

            fn poll_effect(&mut self) -> Option<Self::Effect> {
                <$machine>::poll_effect(self)
            }

            fn poll_event(&mut self) -> Option<Self::Event> {
                <$machine>::poll_event(self)
            }

            fn poll_timeout(&self) -> Option<Instant> {
                <$machine>::poll_timeout(self)
            }
        }
    };
}

machine!(Directory, directory);
machine!(Relay, relay);

/// Takes a daemon's data directory: locked for this process first (one daemon per directory),
/// created if need be (mode 0700), and the node's signing key read or made there.
pub(crate) fn open_data_dir(path: &Path) -> Result<(DataDirLock, PathBuf, SigningKey), NetError> {
    let lock = DataDirLock::acquire(path)?;
    let dir = keys::ensure_dir(path)?;
    let key = keys::load_or_create_key(&dir)?;
    Ok((lock, dir, key))
}

/// The machine, the driver's clock and the timer's wake-up, held by a driver's shared state.
pub(crate) struct Core<M> {
    /// Written by every `handle_*` and mutator; read, by many request threads at once, by the
    /// paths a machine serves through `&self` (a directory's redirects).
    machine: RwLock<M>,
    clock: Clock,
    timer: Notify,
}

impl<M> Core<M> {
    pub(crate) fn new(machine: M, clock: Clock) -> Self {
        Self { machine: RwLock::new(machine), clock, timer: Notify::new() }
    }
}

pub(crate) type EffectOf<D> = <<D as Driver>::Machine as Machine>::Effect;
pub(crate) type EventOf<D> = <<D as Driver>::Machine as Machine>::Event;

/// A driver's shared state: its [`Core`], and what it does with the machine's outputs.
/// Implementors give the three required items; the provided ones keep the drain contract.
pub(crate) trait Driver: Send + Sync + Sized + 'static {
    type Machine: Machine;

    fn core(&self) -> &Core<Self::Machine>;

    /// Called for each event drained, in order, with the machine locked: log it, publish it;
    /// never touch the machine.
    fn on_event(&self, event: EventOf<Self>);

    /// Runs drained effects, or starts them as tasks. Whatever an effect's outcome feeds back
    /// goes in through [`Driver::with_machine`] again.
    fn execute(self: &Arc<Self>, effects: Vec<EffectOf<Self>>) -> impl Future<Output = ()> + Send;

    /// The machine, for reading. A panic while holding the lock leaves a machine whose
    /// invariants were checked before each mutation; serving on is better than refusing every
    /// request, so a poisoned lock is taken as it is.
    fn lock(&self) -> RwLockWriteGuard<'_, Self::Machine> {
        self.core().machine.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// The machine, shared with other readers: for what it answers through `&self` on the hot
    /// path (a redirect), so requests do not queue behind one another. Poisoning as in `lock`.
    fn read(&self) -> RwLockReadGuard<'_, Self::Machine> {
        self.core().machine.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// The driver's clock, in the machine's units.
    fn now(&self) -> Instant {
        self.core().clock.now()
    }

    /// Runs `f` (a `handle_*` call or a mutator) on the machine at the current instant, then
    /// drains it: events to [`Driver::on_event`], effects returned for [`Driver::execute`]; then
    /// wakes the timer to re-arm at the new `poll_timeout`.
    fn with_machine<R>(&self, f: impl FnOnce(&mut Self::Machine, Instant) -> R) -> (R, Vec<EffectOf<Self>>) {
        let mut m = self.lock();
        let out = f(&mut m, self.now());
        let mut effects = Vec::new();
        while let Some(effect) = m.poll_effect() {
            effects.push(effect);
        }
        while let Some(event) = m.poll_event() {
            self.on_event(event);
        }
        drop(m);
        self.core().timer.notify_one();
        (out, effects)
    }
}

/// Sleeps until the machine's `poll_timeout` and feeds it `handle_timeout`, re-reading the
/// deadline whenever [`Driver::with_machine`] wakes it, until `stop` changes.
pub(crate) async fn timer_loop<D: Driver>(driver: Arc<D>, mut stop: watch::Receiver<bool>) {
    loop {
        let sleep = driver.core().clock.sleep_until(driver.lock().poll_timeout());
        tokio::select! {
            () = sleep => {}
            () = driver.core().timer.notified() => continue,
            _ = stop.changed() => return,
        }
        let (_, effects) = driver.with_machine(|m, now| m.handle_timeout(now));
        driver.execute(effects).await;
    }
}

/// Serves `driver` on `listener`, each request answered by `handle`, with [`timer_loop`] beside
/// it, until `shutdown`; the timer stops once the accept loop has wound down.
pub(crate) async fn run<D, H, F>(driver: Arc<D>, listener: crate::Listener, handle: H, shutdown: impl Future<Output = ()>) -> Result<(), NetError>
where
    D: Driver,
    H: Fn(Arc<D>, Request<Incoming>) -> F + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let (stop_tx, stop_rx) = watch::channel(false);
    let timer = tokio::spawn(timer_loop(driver.clone(), stop_rx));
    let handler = Arc::new(move |req: Request<Incoming>| handle(driver.clone(), req));
    let result = crate::serve(listener, handler, shutdown).await;
    let _ = stop_tx.send(true);
    let _ = timer.await;
    result
}
