//! Metric names in one place, and the per-table counters the actors update once per batch.

use metrics::{counter, gauge, Counter, Gauge};

use crate::pipeline::writer::TableCounts;

pub const ROWS_READ: &str = "mimic_eye_rows_read_total";
pub const ROWS_WRITTEN: &str = "mimic_eye_rows_written_total";
pub const ROWS_OUTSIDE: &str = "mimic_eye_rows_outside_cohort_total";
pub const ROWS_REJECTED: &str = "mimic_eye_rows_rejected_total";
pub const BYTES_READ: &str = "mimic_eye_bytes_read_total";
pub const WRITER_BUFFERED: &str = "mimic_eye_writer_buffered_bytes";
pub const OPEN_FILES: &str = "mimic_eye_open_output_files";

/// Handles to one table's counters, looked up once per job rather than per row.
pub struct TableMetrics {
    read: Counter,
    written: Counter,
    outside: Counter,
    rejected: Counter,
    bytes: Counter,
    buffered: Gauge,
    open_files: Gauge,
}

impl TableMetrics {
    pub fn new(table: &str) -> Self {
        let t = table.to_string();
        Self {
            read: counter!(ROWS_READ, "table" => t.clone()),
            written: counter!(ROWS_WRITTEN, "table" => t.clone()),
            outside: counter!(ROWS_OUTSIDE, "table" => t.clone()),
            rejected: counter!(ROWS_REJECTED, "table" => t.clone()),
            bytes: counter!(BYTES_READ, "table" => t.clone()),
            buffered: gauge!(WRITER_BUFFERED, "table" => t.clone()),
            open_files: gauge!(OPEN_FILES, "table" => t),
        }
    }

    pub fn add(&self, before: &TableCounts, after: &TableCounts) {
        self.read.increment(after.read - before.read);
        self.written.increment(after.written - before.written);
        self.outside.increment(after.outside_cohort - before.outside_cohort);
        self.rejected.increment(after.rejected - before.rejected);
    }

    pub fn add_bytes(&self, n: u64) {
        self.bytes.increment(n);
    }

    pub fn set_buffered(&self, bytes: usize, open_files: usize) {
        self.buffered.set(bytes as f64);
        self.open_files.set(open_files as f64);
    }
}
