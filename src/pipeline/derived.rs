//! Derived tables, made in memory from the linker's small tables and written through the same
//! writer: cxr_meta (with the stay links), the stacked REFLACX metadata, the master sheet.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::pipeline::batch::{self, Batch};
use crate::pipeline::context::BuildContext;
use crate::pipeline::counts::TableCounts;
use crate::pipeline::error::{At, JobError};
use crate::pipeline::paths;
use crate::pipeline::publish::{self, Manifest};
use crate::pipeline::writer::{Route, Writer, WriterSpec};

/// Where an in-memory derived table (cxr_meta, REFLACX metadata, master sheet) goes.
pub(super) struct DerivedTable<'a> {
    /// The job (and manifest) name.
    pub job: &'a str,
    /// The file its rows came from, named in its rejects.
    pub source: &'a Path,
    pub route: Route,
    /// Inside each patient folder, when split by subject.
    pub patient_file: Option<PathBuf>,
    /// The whole table, under the output root.
    pub whole_file: Option<PathBuf>,
    /// Malformed source records past the ones kept for the rejects file: counted only.
    pub rejects_not_kept: u64,
}

/// Writes a derived table's `rows` (under `header`) through a writer and publishes it as one job.
pub(super) fn write_derived(
    ctx: &BuildContext,
    table: DerivedTable<'_>,
    header: Vec<u8>,
    rows: batch::Batch,
) -> Result<TableCounts, JobError> {
    let DerivedTable { job, source, route, patient_file, whole_file, rejects_not_kept } = table;
    let staging = paths::staging_dir(&ctx.config.output, job);
    let _ = std::fs::remove_dir_all(&staging);
    let spec = WriterSpec {
        table: job.to_string(),
        source: source.to_path_buf(),
        header,
        index_column: ctx.config.index_column,
        route,
        patient_file,
        whole_file,
        cohort: Arc::clone(&ctx.cohort),
        staging,
        max_open_files: ctx.max_open_files,
        only_patients: None,
    };
    let mut writer = Writer::new(spec)?;
    writer.write_batch(&rows)?;
    let mut outcome = writer.finish()?;
    if rejects_not_kept > 0 {
        tracing::warn!(
            table = job,
            rows = rejects_not_kept,
            "more malformed rows than the rejects file keeps: counted only"
        );
        outcome.counts.read += rejects_not_kept;
        outcome.counts.rejected += rejects_not_kept;
    }
    let manifest =
        Manifest { job: job.to_string(), files: outcome.files, counts: outcome.counts, ..Default::default() };
    publish::publish(&ctx.config.output, manifest).at(&ctx.config.output)?;
    Ok(outcome.counts)
}

/// The CXR metadata rows with the columns the build adds, as one batch: all of them, or only
/// those linked to a stay. Built one at a time and dropped once written: at 65,000 patients
/// the rows, their batch and the linked batch held together were 73 MB of a build's heap.
fn cxr_meta_batch(links: &crate::pipeline::linker::Links, only_linked: bool) -> Batch {
    let tf = |b: bool| if b { "True" } else { "False" };
    let mut batch = Batch::default();
    let mut rec = Vec::new();
    for r in links.cxr_rows.iter().filter(|r| !only_linked || r.stay.is_some()) {
        rec.clear();
        rec.extend_from_slice(&r.raw);
        let stay = r.stay.map(|s| s.to_string()).unwrap_or_default();
        rec.extend_from_slice(
            format!(",{},{},{},{stay}", tf(r.in_eye_gaze), tf(r.in_reflacx), r.study_datetime).as_bytes(),
        );
        batch::push_record(&mut batch, r.origin, &rec, r.subject.to_string().as_bytes());
    }
    batch
}

/// `spreadsheets/cxr_meta.csv`, its per-patient rows, and the rows with a stay only.
pub(super) fn write_cxr_meta(ctx: &BuildContext) -> Result<Vec<(String, TableCounts)>, JobError> {
    let links = &ctx.links;
    let mut header = links.cxr_header.raw.clone();
    header.extend_from_slice(b",in_eye_gaze,in_reflacx,StudyDateTime,stay_id");
    let mut all = cxr_meta_batch(links, false);
    crate::pipeline::batch::append_rejects(&mut all, &links.cxr_rejects);
    let meta = write_derived(
        ctx,
        DerivedTable {
            job: "cxr_meta",
            source: &ctx.links.cxr_source,
            route: Route::BySubject,
            patient_file: Some(PathBuf::from("CXR-JPG/cxr_meta.csv")),
            whole_file: Some(PathBuf::from("spreadsheets/cxr_meta.csv")),
            rejects_not_kept: links.cxr_rejects.not_kept,
        },
        header.clone(),
        all,
    )?;
    let stay_only = write_derived(
        ctx,
        DerivedTable {
            job: "cxr_meta_with_stay_id_only",
            source: &ctx.links.cxr_source,
            route: Route::Whole,
            patient_file: None,
            whole_file: Some(PathBuf::from("spreadsheets/cxr_meta_with_stay_id_only.csv")),
            rejects_not_kept: 0,
        },
        header,
        cxr_meta_batch(links, true),
    )?;
    Ok(vec![("cxr_meta".into(), meta), ("cxr_meta_with_stay_id_only".into(), stay_only)])
}
