//! What a build reports: `<output>/summary.json` (headline counts, per-table row balance,
//! failures, provenance) and the one-line headline.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::input::{self};
use crate::pipeline::counts::TableCounts;
use crate::pipeline::folders;
use crate::pipeline::linker::{self};

#[derive(Debug, Clone, Serialize)]
pub struct CohortSummary {
    pub kind: &'static str,
    pub size: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct SourceCounts {
    pub patients: usize,
    pub images: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub profile: &'static str,
    /// The cohort rule and how many patients it gave.
    pub cohort: CohortSummary,
    pub patients: usize,
    pub stays: usize,
    pub images: usize,
    pub linked_images: usize,
    pub eye_gaze: SourceCounts,
    pub reflacx: SourceCounts,
    pub both: SourceCounts,
    pub window_days: u32,
    pub tables: BTreeMap<String, TableCounts>,
    pub failed: BTreeMap<String, String>,
    /// Tables whose input was still being written: previous output kept.
    pub pending: Vec<String>,
    pub missing_datasets: Vec<String>,
    /// Tables gone from the input whose outputs this build removed.
    pub removed_tables: Vec<String>,
    /// Table-like files not read (odd names, symbolic links leaving the input tree).
    pub skipped_files: Vec<input::Skipped>,
    /// The folders this build read, for the daemon's watcher (not written to summary.json).
    #[serde(skip)]
    pub read_folders: Vec<folders::WatchDir>,
    /// Rows of the linker's tables skipped for a malformed id or time (file, line, reason).
    pub linker_skipped: Vec<linker::LinkReject>,
    /// Each parent dataset: folder, version, SHA256SUMS.txt outcome, tables read.
    pub datasets: BTreeMap<&'static str, crate::sums::Provenance>,
    pub program: crate::sums::Program,
    pub settings: crate::sums::Settings,
    /// How the copied folders' files were placed.
    pub files: crate::pipeline::counts::FileStats,
    pub peak_rss_bytes: u64,
    pub duration_seconds: f64,
}

impl Summary {
    pub fn headline(&self) -> String {
        format!(
            "patients {}, stays {}, images {}, linked images {} (profile {})",
            self.patients, self.stays, self.images, self.linked_images, self.profile
        )
    }
}
