//! Graceful shutdown, after mini-redis: one broadcast that every loop selects on.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::{broadcast, mpsc};

/// Listens for the shutdown signal. Cheap to clone (each clone subscribes).
#[derive(Debug)]
pub(crate) struct Shutdown {
    done: bool,
    rx: broadcast::Receiver<()>,
}

impl Shutdown {
    pub(crate) fn new(rx: broadcast::Receiver<()>) -> Self {
        Self { done: false, rx }
    }

    /// Waits until shutdown is signalled (returns at once if it already was).
    pub(crate) async fn recv(&mut self) {
        if self.done {
            return;
        }
        let _ = self.rx.recv().await;
        self.done = true;
    }

    /// Whether shutdown was signalled, without waiting.
    pub(crate) fn is_shutdown(&mut self) -> bool {
        if !self.done {
            self.done = !matches!(self.rx.try_recv(), Err(broadcast::error::TryRecvError::Empty));
        }
        self.done
    }
}

/// Owns the sender: `trigger` tells every `Shutdown` to stop.
#[derive(Debug, Clone)]
pub(crate) struct ShutdownTrigger {
    tx: broadcast::Sender<()>,
}

impl Default for ShutdownTrigger {
    fn default() -> Self {
        Self::new()
    }
}

impl ShutdownTrigger {
    pub(crate) fn new() -> Self {
        Self { tx: broadcast::channel(1).0 }
    }
    pub(crate) fn subscribe(&self) -> Shutdown {
        Shutdown::new(self.tx.subscribe())
    }
    pub(crate) fn trigger(&self) {
        let _ = self.tx.send(());
    }
}

/// One build's cancellation, after mini-redis's shutdown-complete channel: every actor of the
/// build holds a clone while it runs and checks [`CancelToken::is_cancelled`] between batches;
/// when the last clone is dropped, [`CancelOwner::ended`] returns, so the owner knows that
/// every actor of the build has stopped (not only that the build's future was dropped).
#[derive(Debug, Clone)]
pub(crate) struct CancelToken {
    flag: Arc<AtomicBool>,
    _alive: mpsc::Sender<()>,
}

/// The owner's side of a build's [`CancelToken`]s.
#[derive(Debug)]
pub(crate) struct CancelOwner {
    flag: Arc<AtomicBool>,
    ended: mpsc::Receiver<()>,
}

/// A new token and its owner.
pub(crate) fn cancel_pair() -> (CancelOwner, CancelToken) {
    let flag = Arc::new(AtomicBool::new(false));
    let (alive, ended) = mpsc::channel(1);
    (CancelOwner { flag: Arc::clone(&flag), ended }, CancelToken { flag, _alive: alive })
}

impl Default for CancelToken {
    /// A token nobody cancels (a one-shot build).
    fn default() -> Self {
        cancel_pair().1
    }
}

impl CancelToken {
    pub(crate) fn is_cancelled(&self) -> bool {
        self.flag.load(Ordering::Relaxed)
    }
}

impl CancelOwner {
    /// Tells every actor holding a token to stop.
    pub(crate) fn cancel(&self) {
        self.flag.store(true, Ordering::Relaxed);
    }

    /// Returns once every token has been dropped: every actor of the build has ended.
    pub(crate) async fn ended(&mut self) {
        // Nothing is ever sent: `recv` returns `None` once the last sender is gone.
        while self.ended.recv().await.is_some() {}
    }
}
