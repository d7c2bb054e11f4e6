//! Metric names in one place, the per-table counters the actors update once per batch, the
//! build status, and the HTTP listener serving `/metrics`, `/healthz` and `/status`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use metrics::{counter, gauge, Counter, Gauge};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::pipeline::counts::TableCounts;
use crate::shutdown::Shutdown;

pub(crate) const ROWS_READ: &str = "mimic_eye_rows_read_total";
pub(crate) const ROWS_WRITTEN: &str = "mimic_eye_rows_written_total";
pub(crate) const ROWS_OUTSIDE: &str = "mimic_eye_rows_outside_cohort_total";
pub(crate) const ROWS_REJECTED: &str = "mimic_eye_rows_rejected_total";
pub(crate) const BYTES_READ: &str = "mimic_eye_bytes_read_total";
pub(crate) const WRITER_BUFFERED: &str = "mimic_eye_writer_buffered_bytes";
pub(crate) const OPEN_FILES: &str = "mimic_eye_open_output_files";
pub(crate) const CHANNEL_DEPTH: &str = "mimic_eye_channel_depth";
pub(crate) const CHANNEL_CAPACITY: &str = "mimic_eye_channel_capacity";
pub(crate) const TABLE_PROGRESS: &str = "mimic_eye_table_progress_ratio";
pub(crate) const BUILDS: &str = "mimic_eye_builds_total";
pub(crate) const BUILD_DURATION: &str = "mimic_eye_build_duration_seconds";
pub(crate) const LAST_SUCCESS: &str = "mimic_eye_last_success_timestamp_seconds";
pub(crate) const BUILD_RUNNING: &str = "mimic_eye_build_running";
pub(crate) const COHORT_PATIENTS: &str = "mimic_eye_cohort_patients";
pub(crate) const LINKED_IMAGES: &str = "mimic_eye_linked_images";
pub(crate) const IMAGES: &str = "mimic_eye_images";
pub(crate) const STAYS: &str = "mimic_eye_linked_stays";
pub(crate) const TABLES_FAILED: &str = "mimic_eye_tables_failed";
pub(crate) const INPUTS_PENDING: &str = "mimic_eye_inputs_pending";
pub(crate) const WATCH_EVENTS: &str = "mimic_eye_watch_events_total";
pub(crate) const WATCH_ERRORS: &str = "mimic_eye_watch_errors_total";
pub(crate) const WATCHES: &str = "mimic_eye_watches";
pub(crate) const RESIDENT_MEMORY: &str = "mimic_eye_process_resident_memory_bytes";
pub(crate) const CPU_SECONDS: &str = "mimic_eye_process_cpu_seconds_total";
pub(crate) const UP: &str = "mimic_eye_up";
pub(crate) const SUCCESS_MAX_AGE: &str = "mimic_eye_success_max_age_seconds";
pub(crate) const NEWER_VERSION: &str = "mimic_eye_newer_version_available";

/// Build durations: seconds for an incremental pass up to hours for a full one.
const DURATION_BUCKETS: [f64; 12] = [1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 2400.0, 3600.0, 7200.0];

/// Installs the Prometheus recorder (once per process).
pub(crate) fn install_recorder() -> anyhow::Result<PrometheusHandle> {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    if let Some(h) = HANDLE.get() {
        return Ok(h.clone());
    }
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(BUILD_DURATION.to_string()), &DURATION_BUCKETS)?
        .install_recorder()?;
    describe();
    Ok(HANDLE.get_or_init(|| handle).clone())
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(ROWS_READ, "Data rows read from input tables");
    describe_counter!(ROWS_WRITTEN, "Rows written to patient folders (or whole-table files)");
    describe_counter!(ROWS_OUTSIDE, "Rows of subjects outside the cohort");
    describe_counter!(ROWS_REJECTED, "Rows rejected (kept in .mimic-eye/rejects), by reason");
    describe_counter!(BYTES_READ, Unit::Bytes, "Input bytes read (compressed bytes for .gz)");
    describe_gauge!(WRITER_BUFFERED, Unit::Bytes, "Bytes buffered by a table's writer");
    describe_gauge!(OPEN_FILES, "Output files a table's writer holds open");
    describe_gauge!(CHANNEL_DEPTH, "Batches waiting on an actor link");
    describe_gauge!(CHANNEL_CAPACITY, "Capacity of an actor link, in batches");
    describe_gauge!(TABLE_PROGRESS, "Fraction of a table's input read");
    describe_counter!(BUILDS, "Builds by kind (full, incremental) and result (success, failure, cancelled)");
    describe_histogram!(BUILD_DURATION, Unit::Seconds, "Build duration");
    describe_gauge!(LAST_SUCCESS, Unit::Seconds, "Unix time of the last successful build");
    describe_gauge!(BUILD_RUNNING, "1 while a build runs");
    describe_gauge!(
        NEWER_VERSION,
        "1 when a newer version folder of a dataset sits beside the one in use (never switched to)"
    );
    describe_gauge!(COHORT_PATIENTS, "Patients in the cohort");
    describe_gauge!(LINKED_IMAGES, "Images linked to an ED stay");
    describe_gauge!(IMAGES, "Images in the CXR subset");
    describe_gauge!(STAYS, "Distinct ED stays linked");
    describe_gauge!(TABLES_FAILED, "Tables that failed in the last build");
    describe_gauge!(INPUTS_PENDING, "Input files seen changing but not yet complete");
    describe_counter!(WATCH_EVENTS, "File watch events by kind (inotify, overflow, rescan)");
    describe_counter!(WATCH_ERRORS, "Failures to watch the input tree");
    describe_gauge!(WATCHES, "inotify watches held (the folders a build reads)");
    describe_gauge!(RESIDENT_MEMORY, Unit::Bytes, "Resident memory of the process");
    describe_counter!(CPU_SECONDS, Unit::Seconds, "CPU time used by the process");
    describe_gauge!(UP, "1 while the daemon runs");
    describe_gauge!(
        SUCCESS_MAX_AGE,
        Unit::Seconds,
        "Alert when no build succeeded for this long (config alert_max_age_hours)"
    );
    // Exported from the start, so dashboards and alerts see zeros rather than gaps.
    counter!(WATCH_ERRORS).absolute(0);
    counter!(WATCH_EVENTS, "kind" => "inotify").absolute(0);
    gauge!(TABLES_FAILED).set(0.0);
    gauge!(BUILD_RUNNING).set(0.0);
    gauge!(INPUTS_PENDING).set(0.0);
    gauge!(LAST_SUCCESS).set(0.0);
    sample_process();
}

/// Handles to one table's counters, looked up once per job rather than per row.
pub(crate) struct TableMetrics {
    read: Counter,
    written: Counter,
    outside: Counter,
    bytes: Counter,
    buffered: Gauge,
    open_files: Gauge,
    table: String,
}

impl TableMetrics {
    pub(crate) fn new(table: &str) -> Self {
        let t = table.to_string();
        Self {
            read: counter!(ROWS_READ, "table" => t.clone()),
            written: counter!(ROWS_WRITTEN, "table" => t.clone()),
            outside: counter!(ROWS_OUTSIDE, "table" => t.clone()),
            bytes: counter!(BYTES_READ, "table" => t.clone()),
            buffered: gauge!(WRITER_BUFFERED, "table" => t.clone()),
            open_files: gauge!(OPEN_FILES, "table" => t.clone()),
            table: t,
        }
    }

    pub(crate) fn add(&self, before: &TableCounts, after: &TableCounts) {
        self.read.increment(after.read - before.read);
        self.written.increment(after.written - before.written);
        self.outside.increment(after.outside_cohort - before.outside_cohort);
    }

    pub(crate) fn rejected(&self, reason: &'static str, n: u64) {
        counter!(ROWS_REJECTED, "table" => self.table.clone(), "reason" => reason).increment(n);
    }

    pub(crate) fn add_bytes(&self, n: u64) {
        self.bytes.increment(n);
    }

    pub(crate) fn set_buffered(&self, bytes: usize, open_files: usize) {
        self.buffered.set(bytes as f64);
        self.open_files.set(open_files as f64);
    }
}

/// Samples process memory and CPU into gauges (Prometheus-style process metrics).
pub(crate) fn sample_process() {
    if let Ok(s) = std::fs::read_to_string("/proc/self/statm") {
        if let Some(rss_pages) = s.split_whitespace().nth(1).and_then(|v| v.parse::<f64>().ok()) {
            let page = crate::sys::page_size_and_clock_ticks().0 as f64;
            gauge!(RESIDENT_MEMORY).set(rss_pages * page);
        }
    }
    if let Ok(s) = std::fs::read_to_string("/proc/self/stat") {
        // Fields after the command name: utime and stime are the 12th and 13th.
        if let Some(rest) = s.rsplit_once(')').map(|(_, r)| r) {
            let f: Vec<&str> = rest.split_whitespace().collect();
            if let (Some(u), Some(st)) =
                (f.get(11).and_then(|v| v.parse::<u64>().ok()), f.get(12).and_then(|v| v.parse::<u64>().ok()))
            {
                let hz = crate::sys::page_size_and_clock_ticks().1;
                counter!(CPU_SECONDS).absolute((u + st) / hz);
            }
        }
    }
}

/// Error and status texts longer than this are cut: they go to one log line, the systemd STATUS
/// line, `/status` and summary.json, and a hostile input (a million-column header) must not
/// turn them into megabytes.
pub(crate) const MAX_ERROR_TEXT: usize = 1000;

/// `text` cut to [`MAX_ERROR_TEXT`] bytes on a character boundary, saying how much was cut.
pub fn bounded_text(text: &str) -> String {
    if text.len() <= MAX_ERROR_TEXT {
        return text.to_string();
    }
    let mut end = MAX_ERROR_TEXT;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} more bytes)", &text[..end], text.len() - end)
}

/// What the daemon is doing, as `/status` shows it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Phase {
    #[default]
    Starting,
    Building,
    /// A table that decides the cohort is still being written.
    Waiting,
    Idle,
}

/// A build of everything (no earlier output) or of what changed: the `kind` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BuildKind {
    Full,
    Incremental,
}

impl BuildKind {
    pub(crate) fn label(self) -> &'static str {
        match self {
            BuildKind::Full => "full",
            BuildKind::Incremental => "incremental",
        }
    }
}

/// How a build ended: the `result` label of `mimic_eye_builds_total`, and `/status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum BuildResult {
    Success,
    /// A table or the build failed (previous outputs kept).
    Failure,
    /// Stopped by SIGTERM/SIGINT.
    Cancelled,
    /// An input the cohort depends on is still being written: not a failure.
    Pending,
}

impl BuildResult {
    pub(crate) fn label(self) -> &'static str {
        match self {
            BuildResult::Success => "success",
            BuildResult::Failure => "failure",
            BuildResult::Cancelled => "cancelled",
            BuildResult::Pending => "pending",
        }
    }
}

/// The last build's result, with what went wrong (no value of a data row: texts are bounded
/// error messages naming files, lines and columns).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct LastResult {
    pub result: BuildResult,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// What `/status` shows.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct Status {
    pub phase: Phase,
    pub build: u64,
    /// Tables being read now: bytes done of total.
    pub tables: BTreeMap<String, Progress>,
    pub last_result: Option<LastResult>,
    pub last_success_unix: Option<u64>,
    pub headline: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, Serialize)]
pub(crate) struct Progress {
    pub bytes_done: u64,
    pub bytes_total: u64,
}

pub(crate) fn status() -> &'static Mutex<Status> {
    static STATUS: OnceLock<Mutex<Status>> = OnceLock::new();
    STATUS.get_or_init(|| Mutex::new(Status::default()))
}

pub(crate) fn update_status(f: impl FnOnce(&mut Status)) {
    if let Ok(mut s) = status().lock() {
        f(&mut s);
    }
}

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
            let s = status().lock().map(|s| s.clone()).unwrap_or_default();
            ("200 OK", "application/json", serde_json::to_string_pretty(&s).unwrap_or_default())
        }
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
