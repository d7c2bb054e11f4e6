//! The keys of the jobs that do not come from an input table's path (a table job's key is its
//! dataset-relative path, `hosp/labevents`), and the names failures are reported under when no
//! one job failed. One place, so that a renamed job cannot fall silently out of a list that
//! names it ([`STAY_LINKED`]). A key names the job's manifest and state files: renaming one
//! makes the next build redo that job.

pub(crate) const CXR_META: &str = "cxr_meta";
pub(crate) const CXR_META_STAY_ONLY: &str = "cxr_meta_with_stay_id_only";
pub(crate) const REFLACX_METADATA: &str = "reflacx/metadata";
pub(crate) const MASTER_SHEET: &str = "egd-cxr/master_sheet";
/// Profile release's copy of the published fixations table.
pub(crate) const EYE_GAZE_RELEASE_COPY: &str = "egd-cxr/eye_gaze_release_copy";
pub(crate) const CXR_JPG: &str = "files/cxr-jpg";
pub(crate) const CXR_REPORTS: &str = "files/cxr-reports";
pub(crate) const REFLACX_READINGS: &str = "files/reflacx";
pub(crate) const EYE_GAZE_TRANSCRIPTS: &str = "files/eye-gaze-transcripts";

/// The jobs whose content depends on the stay links: while edstays is being written they keep
/// their previous output and counts.
pub(crate) const STAY_LINKED: [&str; 3] = [CXR_META, CXR_META_STAY_ONLY, MASTER_SHEET];

/// Failures not of one job: the derived tables as a whole, copied files that differ from their
/// listed digest, a job task that could not be joined.
pub(crate) const FAILED_DERIVED: &str = "derived";
pub(crate) const FAILED_COPIES: &str = "copied files";
pub(crate) const FAILED_INTERNAL: &str = "internal";
