//! systemd's notify protocol (`Type=notify`): READY, STATUS, WATCHDOG and STOPPING datagrams to
//! `$NOTIFY_SOCKET`. Without that variable (not under systemd) every call does nothing.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use crate::shutdown::Shutdown;

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

/// Pings the watchdog at half the interval systemd asks for (`WATCHDOG_USEC`).
pub(super) fn spawn_watchdog(mut shutdown: Shutdown) {
    let Some(usec) = std::env::var("WATCHDOG_USEC").ok().and_then(|v| v.parse::<u64>().ok()) else { return };
    let every = Duration::from_micros(usec / 2).max(Duration::from_millis(100));
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tokio::select! {
                _ = shutdown.recv() => return,
                _ = tick.tick() => send("WATCHDOG=1"),
            }
        }
    });
}
