//! What this binary is: its version, the commit it was built from and its gzip backend, for
//! `--version`, the start-up line and `mimic_eye_build_info`.

use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

/// The commit the binary was built from (`unknown` outside a git checkout).
pub const COMMIT: &str = env!("MIMIC_EYE_COMMIT");

/// `0.1.0 (commit 1a2b3c4d5e6f, gzip zlib-rs)`.
pub fn text() -> &'static str {
    static TEXT: OnceLock<String> = OnceLock::new();
    TEXT.get_or_init(|| format!("{} (commit {COMMIT}, gzip {})", env!("CARGO_PKG_VERSION"), crate::gzip::BACKEND))
}

/// When the process started, in Unix seconds (fixed at the first call, made at start-up).
pub fn started_unix() -> f64 {
    static STARTED: OnceLock<f64> = OnceLock::new();
    *STARTED.get_or_init(|| SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64()))
}

/// Seconds since start-up.
pub(crate) fn uptime_seconds() -> u64 {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
    (now - started_unix()).max(0.0) as u64
}
