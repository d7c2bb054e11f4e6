//! What a build reports: `<output>/summary.json` (headline counts, per-table row balance,
//! failures, provenance) and the one-line headline.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::config::Profile;
use crate::counts::TableCounts;
use crate::input::{self};
use crate::pipeline::linker::{self};
use crate::pipeline::read_set;

#[derive(Debug, Clone, Serialize)]
pub struct CohortSummary {
    pub kind: &'static str,
    pub size: usize,
}

/// How the subset's images got their stay: one they fall in, the nearest within the window,
/// or none.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct LinkRules {
    pub within_stay: usize,
    pub within_window: usize,
    pub unlinked: usize,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct SourceCounts {
    pub patients: usize,
    pub images: usize,
}

/// What a build did, written to `<output>/summary.json` (docs/SPEC.md §6).
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// The profile built.
    pub profile: Profile,
    /// The cohort rule and how many patients it gave.
    pub cohort: CohortSummary,
    /// Patients in the cohort.
    pub patients: usize,
    pub(crate) stays: usize,
    pub(crate) images: usize,
    pub(crate) linked_images: usize,
    pub(crate) eye_gaze: SourceCounts,
    pub(crate) reflacx: SourceCounts,
    pub(crate) both: SourceCounts,
    /// Images by view position, then by eye-tracking source (`eye_gaze`, `reflacx`, `both`,
    /// `neither` for a cohort beyond them).
    pub(crate) images_by_view: BTreeMap<&'static str, BTreeMap<&'static str, usize>>,
    /// Images by the rule that linked them to a stay.
    pub(crate) links_by_rule: LinkRules,
    /// The stay-link window used.
    pub window_days: u32,
    /// Rows read, written and rejected per table job.
    pub tables: BTreeMap<String, TableCounts>,
    /// Table jobs (one per input table) that ended well.
    pub table_jobs: usize,
    /// Of the table jobs, those found unchanged and not read (their counts are the last build's).
    pub unchanged_tables: usize,
    /// Rows rejected by the tables read this build, by reason (see `.mimic-eye/rejects/`).
    pub rejects_by_reason: BTreeMap<crate::pipeline::batch::DefectKind, u64>,
    /// Table jobs that failed, with the reason (their previous output is kept).
    pub failed: BTreeMap<String, String>,
    /// Tables whose input was still being written: previous output kept.
    pub pending: Vec<String>,
    /// Of their files, those the build found cut short inside a gzip member, for the daemon's
    /// watcher to hold until they change (not written to summary.json).
    #[serde(skip)]
    pub(crate) incomplete_inputs: Vec<std::path::PathBuf>,
    pub(crate) missing_datasets: Vec<String>,
    /// Tables gone from the input whose outputs this build removed.
    pub removed_tables: Vec<String>,
    /// Table-like files not read (odd names, symbolic links leaving the input tree).
    pub skipped_files: Vec<input::Skipped>,
    /// The folders this build read, for the daemon's watcher (not written to summary.json).
    #[serde(skip)]
    pub read_folders: Vec<read_set::WatchDir>,
    /// Rows of the linker's tables skipped for a malformed id or time (file, line, reason).
    pub linker_skipped: Vec<linker::LinkReject>,
    /// Each parent dataset: folder, version, SHA256SUMS.txt outcome, tables read.
    pub datasets: BTreeMap<&'static str, crate::integrity::Provenance>,
    pub(crate) program: crate::integrity::Program,
    /// The settings that shape the output.
    pub settings: crate::integrity::Settings,
    /// How the copied folders' files were placed.
    pub files: crate::counts::FileStats,
    /// The process's peak resident memory so far.
    pub peak_rss_bytes: u64,
    pub(crate) duration_seconds: f64,
}

impl Summary {
    /// The gauges a dashboard shows of the output as it stands: cohort by source, rejects by
    /// table, each dataset's version and checksum state.
    pub(crate) fn export_gauges(&self) {
        use crate::telemetry::{COHORT_SOURCE_IMAGES, COHORT_SOURCE_PATIENTS, DATASET_INFO, OUTPUT_REJECTED};
        use metrics::gauge;
        for (source, counts) in [("reflacx", &self.reflacx), ("eye_gaze", &self.eye_gaze), ("both", &self.both)] {
            gauge!(COHORT_SOURCE_PATIENTS, "source" => source).set(counts.patients as f64);
            gauge!(COHORT_SOURCE_IMAGES, "source" => source).set(counts.images as f64);
        }
        for (table, counts) in &self.tables {
            gauge!(OUTPUT_REJECTED, "table" => table.clone()).set(counts.rejected as f64);
        }
        // An info series whose labels changed (a new version, a checksum state) drops to 0,
        // so that a dashboard shows one current line per dataset.
        static SHOWN: std::sync::Mutex<BTreeMap<&'static str, (String, &'static str)>> =
            std::sync::Mutex::new(BTreeMap::new());
        let mut shown = SHOWN.lock().unwrap_or_else(|e| e.into_inner());
        for (dataset, p) in &self.datasets {
            let now = (p.version.clone().unwrap_or_else(|| "none".to_string()), p.sha256sums);
            if let Some(old) = shown.insert(dataset, now.clone()).filter(|old| *old != now) {
                gauge!(DATASET_INFO, "dataset" => *dataset, "version" => old.0, "sha256sums" => old.1).set(0.0);
            }
            gauge!(DATASET_INFO, "dataset" => *dataset, "version" => now.0, "sha256sums" => now.1).set(1.0);
        }
    }

    /// What `build` prints when it ends: the headline, then what was done, kept, rejected,
    /// missing and warned about, or that nothing changed. Counts only, never a row's value.
    pub fn closing_text(&self, warnings: u64) -> String {
        use std::fmt::Write as _;
        let mut s = self.headline();
        let _ = write!(
            s,
            "\ntook {:.1} s; tables: {} read, {} unchanged (not read)",
            self.duration_seconds,
            self.table_jobs - self.unchanged_tables,
            self.unchanged_tables
        );
        for (n, what) in [
            (self.failed.len(), "failed (previous output kept)"),
            (self.pending.len(), "still being written (previous output kept)"),
            (self.removed_tables.len(), "gone from the input (outputs removed)"),
        ] {
            if n > 0 {
                let _ = write!(s, ", {n} {what}");
            }
        }
        let total = |f: fn(&TableCounts) -> u64| self.tables.values().map(f).sum::<u64>();
        let _ = write!(
            s,
            "\nrows of the tables as they stand: {} read, {} written, {} outside the cohort, {} rejected",
            total(|c| c.read),
            total(|c| c.written),
            total(|c| c.outside_cohort),
            total(|c| c.rejected)
        );
        if !self.rejects_by_reason.is_empty() {
            let reasons: Vec<String> = self.rejects_by_reason.iter().map(|(r, n)| format!("{r} {n}")).collect();
            let _ = write!(s, " (this build: {}; rows in .mimic-eye/rejects/)", reasons.join(", "));
        }
        for dataset in &self.missing_datasets {
            let _ = write!(s, "\nmissing: {dataset}: {}", missing_effect(dataset));
        }
        if warnings > 0 {
            let _ = write!(s, "\nwarnings: {warnings} (logged above)");
        }
        let placed =
            self.files.linked + self.files.copied + self.files.reflinked + self.files.symlinked + self.files.written;
        if self.table_jobs == self.unchanged_tables
            && placed == self.files.kept
            && self.failed.is_empty()
            && self.removed_tables.is_empty()
        {
            s.push_str("\nnothing changed: the output is as the last build left it");
        }
        s
    }

    /// One line for the terminal: patients, stays, images, failures.
    pub fn headline(&self) -> String {
        format!(
            "patients {}, stays {}, images {}, linked images {} (profile {})",
            self.patients,
            self.stays,
            self.images,
            self.linked_images,
            self.profile.as_str()
        )
    }
}

/// What a build without `dataset` lacks, for the closing summary.
fn missing_effect(dataset: &str) -> &'static str {
    match dataset {
        "mimic-iv-ed" => "stays and linked images are 0 without it (the X-rays link to ED stays)",
        "egd-cxr" => "EyeGaze's patients are not in the cohort",
        "reflacx" => "REFLACX's patients are not in the cohort",
        "mimiciv/icu" => "no ICU tables in the patient folders",
        "mimic-cxr" => "no radiology reports in the patient folders",
        _ => "left out",
    }
}

/// The subset's images by view position and eye-tracking source.
pub(super) fn images_by_view(links: &linker::Links) -> BTreeMap<&'static str, BTreeMap<&'static str, usize>> {
    let mut by_view: BTreeMap<&'static str, BTreeMap<&'static str, usize>> = BTreeMap::new();
    for row in &links.cxr_rows {
        let source = match (row.in_eye_gaze, row.in_reflacx) {
            (true, true) => "both",
            (true, false) => "eye_gaze",
            (false, true) => "reflacx",
            (false, false) => "neither",
        };
        *by_view.entry(row.view.label()).or_default().entry(source).or_default() += 1;
    }
    by_view
}

pub(super) fn links_by_rule(links: &linker::Links) -> LinkRules {
    let mut rules = LinkRules::default();
    for row in &links.cxr_rows {
        match (row.stay, row.by_window) {
            (None, _) => rules.unlinked += 1,
            (Some(_), false) => rules.within_stay += 1,
            (Some(_), true) => rules.within_window += 1,
        }
    }
    rules
}
