//! The HTTP listener: `/metrics`, `/healthz` and `/status` on a loopback address, a few
//! connections at a time, each with a deadline.

use std::net::SocketAddr;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::process::sample_process;
use super::status::status;
use crate::shutdown::Shutdown;

/// Connections served at once (a scraper and a few curls need far fewer, and each held
/// connection costs a task and a descriptor); one more evicts the oldest idle one, or is closed
/// at once when every slot is answering.
pub(crate) const MAX_CONNECTIONS: usize = 32;
/// A connection that has not sent its whole request by then is closed.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// The longest a connection is served, request and response together.
pub(crate) const CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);

/// The connections being served, so that a full house can make room: a new connection evicts
/// the oldest one that has not sent its whole request yet (idle or trickling), so one local
/// client holding every slot cannot keep `/healthz` and `/metrics` from answering.
#[derive(Default)]
struct Connections {
    next_id: u64,
    open: Vec<Connection>,
}

struct Connection {
    id: u64,
    /// Still reading its request (set false once the request is in).
    reading: std::sync::Arc<std::sync::atomic::AtomicBool>,
    abort: tokio::task::AbortHandle,
}

impl Connections {
    /// Room for one more: true when a slot is free or an idle connection was evicted.
    fn make_room(&mut self) -> bool {
        use std::sync::atomic::Ordering;
        if self.open.len() < MAX_CONNECTIONS {
            return true;
        }
        // The oldest first: `open` is in the order connections came.
        match self.open.iter().position(|c| c.reading.load(Ordering::Relaxed)) {
            Some(i) => {
                self.open.remove(i).abort.abort();
                true
            }
            None => false,
        }
    }

    fn remove(&mut self, id: u64) {
        self.open.retain(|c| c.id != id);
    }
}

/// Serves `/metrics`, `/healthz` and `/status` until shutdown. `alive` tells `/healthz`.
pub(crate) async fn serve(
    listener: TcpListener,
    handle: PrometheusHandle,
    alive: impl Fn() -> bool + Send + Sync + 'static,
    mut shutdown: Shutdown,
) {
    use std::sync::{Arc, Mutex as StdMutex};
    let alive = Arc::new(alive);
    let connections = Arc::new(StdMutex::new(Connections::default()));
    let mut backoff = Duration::ZERO;
    loop {
        tokio::select! {
            _ = shutdown.recv() => return,
            conn = listener.accept() => {
                let stream = match conn {
                    Ok((stream, _)) => {
                        backoff = Duration::ZERO;
                        stream
                    }
                    // Out of descriptors (EMFILE) and the like: back off instead of spinning.
                    Err(e) => {
                        backoff = (backoff * 2).clamp(Duration::from_millis(10), Duration::from_secs(1));
                        tracing::warn!(error = %e, retry_in = ?backoff, "accepting a metrics connection failed");
                        tokio::time::sleep(backoff).await;
                        continue;
                    }
                };
                let mut open = connections.lock().unwrap_or_else(|e| e.into_inner());
                if !open.make_room() {
                    drop(stream); // every slot is answering a request: closed at once
                    continue;
                }
                let id = open.next_id;
                open.next_id += 1;
                let reading = Arc::new(std::sync::atomic::AtomicBool::new(true));
                let (handle, alive, all) = (handle.clone(), Arc::clone(&alive), Arc::clone(&connections));
                let flag = Arc::clone(&reading);
                let task = tokio::spawn(async move {
                    let _ = tokio::time::timeout(CONNECTION_TIMEOUT, respond(stream, &handle, &*alive, &flag)).await;
                    all.lock().unwrap_or_else(|e| e.into_inner()).remove(id);
                });
                open.open.push(Connection { id, reading, abort: task.abort_handle() });
            }
        }
    }
}

pub(crate) async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|e| anyhow::anyhow!("cannot listen on {addr} for metrics: {e}"))
}

async fn respond(
    mut stream: TcpStream,
    handle: &PrometheusHandle,
    alive: &(dyn Fn() -> bool + Send + Sync),
    reading: &std::sync::atomic::AtomicBool,
) -> std::io::Result<()> {
    let mut req = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    let read_request = async {
        while !req.windows(4).any(|w| w == b"\r\n\r\n") && req.len() < 8192 {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            req.extend_from_slice(&buf[..n]);
        }
        Ok::<(), std::io::Error>(())
    };
    // An idle or trickling client is dropped quickly instead of holding its slot.
    tokio::time::timeout(REQUEST_TIMEOUT, read_request)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no request"))??;
    reading.store(false, std::sync::atomic::Ordering::Relaxed);
    let line = String::from_utf8_lossy(&req);
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let (code, ctype, body) = match (method, path) {
        ("GET" | "HEAD", "/metrics") => {
            sample_process();
            handle.run_upkeep();
            ("200 OK", "text/plain; version=0.0.4; charset=utf-8", handle.render())
        }
        ("GET" | "HEAD", "/healthz") if alive() => ("200 OK", "text/plain", "ok\n".to_string()),
        ("GET" | "HEAD", "/healthz") => ("503 Service Unavailable", "text/plain", "pipeline stopped\n".to_string()),
        ("GET" | "HEAD", "/status") => {
            let mut s = status().lock().map(|s| s.clone()).unwrap_or_default();
            (s.version, s.uptime_seconds) = (crate::version::text(), crate::version::uptime_seconds());
            ("200 OK", "application/json", serde_json::to_string_pretty(&s).unwrap_or_default())
        }
        ("GET" | "HEAD", "/" | "/report.html") => ("200 OK", "text/html; charset=utf-8", live_report()),
        ("GET" | "HEAD", _) => ("404 Not Found", "text/plain", "not found\n".to_string()),
        _ => ("405 Method Not Allowed", "text/plain", "method not allowed\n".to_string()),
    };
    let head = format!(
        "HTTP/1.1 {code}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    if method != "HEAD" {
        stream.write_all(body.as_bytes()).await?;
    }
    stream.shutdown().await
}

/// The daemon's page: its renderer (set by the daemon) given the status now.
fn live_report() -> String {
    let mut s = status().lock().map(|s| s.clone()).unwrap_or_default();
    (s.version, s.uptime_seconds) = (crate::version::text(), crate::version::uptime_seconds());
    super::status::page_renderer().map_or_else(|| "no page\n".to_string(), |render| render(&s))
}
