//! What the daemon is doing, as `/status` shows it, and the bounded texts it carries.

use std::collections::BTreeMap;
use std::sync::{Mutex, OnceLock};

use serde::Serialize;

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
    /// `0.1.0 (commit …, gzip …)`, and seconds since start (filled in when served).
    pub version: &'static str,
    pub uptime_seconds: u64,
    pub phase: Phase,
    pub build: u64,
    /// Tables being read now: bytes done of total.
    pub tables: BTreeMap<String, Progress>,
    pub last_result: Option<LastResult>,
    /// The last build's failed tables, each with its cause (file, line, what).
    pub failed_tables: BTreeMap<String, String>,
    pub last_success_unix: Option<u64>,
    pub headline: Option<String>,
    /// Input files seen changing and not yet complete (a download in progress, or one that
    /// stopped: a truncated gzip stays here until it changes).
    pub pending_inputs: PendingInputs,
}

/// The pending input files: how many, how long the oldest has waited, the first few paths.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct PendingInputs {
    pub count: usize,
    pub oldest_seconds: u64,
    pub first: Vec<String>,
}

/// The pending paths `/status` lists (the count says how many there are in all).
pub(crate) const PENDING_LISTED: usize = 10;

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

/// Renders the page `/` serves from the status now (the daemon sets it: the last build's
/// report, which this module does not know).
static PAGE: OnceLock<fn(&Status) -> String> = OnceLock::new();

pub(crate) fn set_page_renderer(render: fn(&Status) -> String) {
    let _ = PAGE.set(render);
}

pub(crate) fn page_renderer() -> Option<fn(&Status) -> String> {
    PAGE.get().copied()
}
