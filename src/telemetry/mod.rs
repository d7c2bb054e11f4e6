//! Metric names in one place, the per-table counters the actors update once per batch and the
//! process metrics; the build status ([`status`]) and the HTTP listener serving `/metrics`,
//! `/healthz` and `/status` ([`http`]).

mod http;
mod process;
pub(crate) mod status;

pub(crate) use http::{bind, serve};
pub(crate) use process::sample_process;
pub use status::bounded_text;
pub(crate) use status::*;

use std::sync::OnceLock;

use metrics::{counter, gauge, Counter, Gauge};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::counts::TableCounts;

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
pub(crate) const INPUTS_PENDING_OLDEST: &str = "mimic_eye_inputs_pending_oldest_seconds";
pub(crate) const OUTPUT_REJECTED: &str = "mimic_eye_output_rejected_rows";
pub(crate) const COHORT_SOURCE_PATIENTS: &str = "mimic_eye_cohort_source_patients";
pub(crate) const COHORT_SOURCE_IMAGES: &str = "mimic_eye_cohort_source_images";
pub(crate) const DATASET_INFO: &str = "mimic_eye_dataset_info";
pub(crate) const BUILD_INFO: &str = "mimic_eye_build_info";
pub(crate) const RELOADS: &str = "mimic_eye_config_reloads_total";
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
    describe_gauge!(
        INPUTS_PENDING_OLDEST,
        Unit::Seconds,
        "How long the oldest pending input file has been waiting to be complete (0: none)"
    );
    describe_gauge!(
        OUTPUT_REJECTED,
        "Rows rejected by the tables of the current output (unchanged when a table is only re-read)"
    );
    describe_gauge!(COHORT_SOURCE_PATIENTS, "Cohort patients by eye-tracking source (reflacx, eye_gaze, both)");
    describe_gauge!(COHORT_SOURCE_IMAGES, "Cohort images by eye-tracking source (reflacx, eye_gaze, both)");
    describe_gauge!(DATASET_INFO, "1 per parent dataset read; labels: version, sha256sums (verified, mismatch, ...)");
    describe_gauge!(BUILD_INFO, "Always 1; the labels say the version, commit and gzip backend");
    describe_counter!(RELOADS, "Configuration reloads (SIGHUP) by result (applied, failed, refused)");
    describe_counter!(WATCH_EVENTS, "File watch events by kind (inotify, overflow, rescan)");
    describe_counter!(WATCH_ERRORS, "Failures to watch the input tree");
    describe_gauge!(WATCHES, "inotify watches held (the folders a build reads)");
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
    gauge!(INPUTS_PENDING_OLDEST).set(0.0);
    for result in ["applied", "failed", "refused"] {
        counter!(RELOADS, "result" => result).absolute(0);
    }
    let (commit, backend) = (crate::version::COMMIT, crate::gzip::BACKEND);
    gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION"), "commit" => commit, "backend" => backend).set(1.0);
    process::describe();
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
