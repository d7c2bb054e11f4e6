//! systemd's notify protocol (`Type=notify`): READY, STATUS, WATCHDOG and STOPPING datagrams to
//! `$NOTIFY_SOCKET`. Without that variable (not under systemd) every call does nothing.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

pub(super) fn send(message: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else { return };
    let Ok(socket) = UnixDatagram::unbound() else { return };
    let bytes = path.as_encoded_bytes();
    let result = if let Some(name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(name)
            .and_then(|a| socket.send_to_addr(message.as_bytes(), &a))
    } else {
        socket.send_to(message.as_bytes(), &path)
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "sd_notify failed");
    }
}

/// systemd's watchdog (`WATCHDOG_USEC`), fed by the daemon's own loop: [`Watchdog::due`] is
/// one branch of the loop's `select!`, so the pings stop when the loop stops making progress
/// (a separate timer task would ping on while the loop is stuck).
pub(super) struct Watchdog {
    tick: Option<tokio::time::Interval>,
}

impl Watchdog {
    /// Pings at half the interval systemd asks for; never, when not under a watchdog.
    pub(super) fn from_env() -> Self {
        let usec = std::env::var("WATCHDOG_USEC").ok().and_then(|v| v.parse::<u64>().ok());
        let tick = usec.map(|usec| {
            let mut tick = tokio::time::interval(Duration::from_micros(usec / 2).max(Duration::from_millis(100)));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick
        });
        Self { tick }
    }

    /// Returns when a ping is due (pending for ever without a watchdog).
    pub(super) async fn due(&mut self) {
        match &mut self.tick {
            Some(tick) => {
                tick.tick().await;
            }
            None => std::future::pending().await,
        }
    }

    /// Tells systemd the loop is alive.
    pub(super) fn ping(&self) {
        send("WATCHDOG=1");
    }
}
