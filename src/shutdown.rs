//! Graceful shutdown, after mini-redis: one broadcast that every loop selects on.

use tokio::sync::broadcast;

/// Listens for the shutdown signal. Cheap to clone (each clone subscribes).
#[derive(Debug)]
pub struct Shutdown {
    done: bool,
    rx: broadcast::Receiver<()>,
}

impl Shutdown {
    pub fn new(rx: broadcast::Receiver<()>) -> Self {
        Self { done: false, rx }
    }

    /// Waits until shutdown is signalled (returns at once if it already was).
    pub async fn recv(&mut self) {
        if self.done {
            return;
        }
        let _ = self.rx.recv().await;
        self.done = true;
    }
}

/// Owns the sender: `trigger` tells every `Shutdown` to stop.
#[derive(Debug, Clone)]
pub struct ShutdownTrigger {
    tx: broadcast::Sender<()>,
}

impl Default for ShutdownTrigger {
    fn default() -> Self {
        Self::new()
    }
}

impl ShutdownTrigger {
    pub fn new() -> Self {
        Self { tx: broadcast::channel(1).0 }
    }
    pub fn subscribe(&self) -> Shutdown {
        Shutdown::new(self.tx.subscribe())
    }
    pub fn trigger(&self) {
        let _ = self.tx.send(());
    }
}
