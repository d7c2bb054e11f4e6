//! The side tables, fixed whole in memory and written through the same writer as the streamed
//! ones: the stacked REFLACX metadata and the EyeGaze master sheet with updated stays (SPEC §4),
//! and profile release's copy of the published fixations table.

use std::path::{Path, PathBuf};

use crate::config::Profile;
use crate::counts::TableCounts;
use crate::csvscan::encode_record;
use crate::pipeline::batch::Rejects;
use crate::pipeline::batch::{append_rejects, batch_of};
use crate::pipeline::context::BuildContext;
use crate::pipeline::derived::output::{unchanged, write_derived, DerivedTable};
use crate::pipeline::error::JobError;
use crate::pipeline::fixer::reflacx;
use crate::pipeline::job_keys;
use crate::pipeline::paths;
use crate::pipeline::small_table::SmallTable;
use crate::pipeline::staging::Staging;
use crate::pipeline::state;
use crate::pipeline::writer::Route;
use crate::pyfmt::python_float_repr;

fn field(fields: &[Vec<u8>], i: usize) -> &[u8] {
    fields.get(i).map_or(&[][..], Vec::as_slice)
}

/// What the side-table writers return: each job with its counts.
type Written = Vec<(String, TableCounts)>;

/// The fixed small tables: stacked REFLACX metadata and the EyeGaze master sheet.
/// `stays_known`: false while edstays is being written; the master sheet, whose stay_id comes
/// from the links, then keeps its previous output.
pub(crate) fn write_fixed_side_tables(ctx: &BuildContext, stays_known: bool) -> Result<Written, JobError> {
    let mut done = Vec::new();
    // A table last published from the same link and settings is not made again: its rows are
    // decided by what the link read.
    let mut table = |job: &str, write: &dyn Fn() -> Result<TableCounts, JobError>| -> Result<(), JobError> {
        let counts = match unchanged(ctx, job) {
            Some(counts) => counts,
            None => write()?,
        };
        done.push((job.to_string(), counts));
        Ok(())
    };
    if let Some(first) = ctx.reflacx_phases.first() {
        table(job_keys::REFLACX_METADATA, &|| reflacx_metadata(ctx, &first.path))?;
    }
    if let Some(sheet) = ctx.master_sheet.as_ref().filter(|_| stays_known) {
        table(job_keys::MASTER_SHEET, &|| master_sheet(ctx, sheet))?;
    }
    Ok(done)
}

/// The REFLACX phases stacked (merged in profile paper), per patient and whole.
fn reflacx_metadata(ctx: &BuildContext, first: &Path) -> Result<TableCounts, JobError> {
    let phases = &ctx.reflacx_phases;
    let mut table = reflacx::stack(phases);
    if ctx.config.profile == Profile::Paper {
        table = reflacx::merge(&table, reflacx::max_certainty);
    }
    let mut rejects = Rejects::default();
    phases.iter().for_each(|p| rejects.extend(&p.rejects));
    let target =
        by_subject(job_keys::REFLACX_METADATA, first, "REFLACX/metadata.csv", "spreadsheets/REFLACX/metadata.csv");
    write_columns(ctx, target, &table, &rejects, "subject_id")
}

/// The master sheet with each image's stay from the links, per patient and whole.
fn master_sheet(ctx: &BuildContext, sheet: &SmallTable) -> Result<TableCounts, JobError> {
    let d = sheet.require("dicom_id")?;
    let s = sheet.require("stay_id")?;
    let mut table = reflacx::Columns::of(sheet);
    for fields in &mut table.rows {
        let stay = crate::ids::DicomId::parse(field(fields, d))
            .ok()
            .and_then(|dicom| ctx.links.stays_by_dicom.get(&dicom).copied());
        let value = match (ctx.config.profile, stay) {
            (Profile::Paper, Some(id)) => id.to_string(),
            (Profile::Paper, None) => String::new(),
            (Profile::Release, Some(id)) => python_float_repr(id.get() as f64),
            (Profile::Release, None) => "nan".to_string(),
        };
        if let Some(f) = fields.get_mut(s) {
            *f = value.into_bytes();
        }
    }
    let target = by_subject(
        job_keys::MASTER_SHEET,
        &sheet.path,
        "EyeGaze/master_sheet.csv",
        "spreadsheets/EyeGaze/master_sheet_with_updated_stayId.csv",
    );
    write_columns(ctx, target, &table, &sheet.rejects, "patient_id")
}

/// Profile release: the released build wrote fixations.csv where the whole eye_gaze table
/// belonged, so `spreadsheets/EyeGaze/eye_gaze.csv` is a copy of the published fixations table
/// (run after the table jobs: it reads their output).
pub(crate) fn write_release_eye_gaze_copy(ctx: &BuildContext) -> Result<(), JobError> {
    if ctx.config.profile != Profile::Release {
        return Ok(());
    }
    let from = ctx.config.output.join("spreadsheets/EyeGaze/fixations.csv");
    if from.exists() {
        let job = job_keys::EYE_GAZE_RELEASE_COPY;
        let rel = PathBuf::from("spreadsheets/EyeGaze/eye_gaze.csv");
        let staging = Staging::fresh(&ctx.config.output, &ctx.dirs, job)?;
        let staged = paths::staged_path(staging.dir(), &rel);
        std::fs::copy(&from, &staged).map_err(|cause| JobError::Write { path: staged.clone(), cause })?;
        staging.publish(state::Manifest { job: job.into(), files: vec![rel], ..Default::default() })?;
    }
    Ok(())
}

/// A table written per patient (`patient_file` in each folder) and whole (`whole_file`).
fn by_subject<'a>(job: &'a str, source: &'a Path, patient_file: &str, whole_file: &str) -> DerivedTable<'a> {
    DerivedTable {
        job,
        source,
        route: Route::BySubject,
        patient_file: Some(PathBuf::from(patient_file)),
        whole_file: Some(PathBuf::from(whole_file)),
        rejects_not_kept: 0,
    }
}

/// Writes a decoded table split by `key` (a subject id column) and whole; the index column is
/// the row's number in its own source file (each REFLACX phase starts at 0, as the authors'
/// build wrote it).
fn write_columns(
    ctx: &BuildContext,
    target: DerivedTable<'_>,
    table: &reflacx::Columns,
    rejects: &Rejects,
    key: &str,
) -> Result<TableCounts, JobError> {
    let k = table.names.iter().position(|n| n.eq_ignore_ascii_case(key));
    let names: Vec<Vec<u8>> = table.names.iter().map(|n| n.as_bytes().to_vec()).collect();
    let header = encode_record(&names);
    let keys: Vec<Vec<u8>> = table.rows.iter().map(|r| k.map(|k| field(r, k).to_vec()).unwrap_or_default()).collect();
    let mut batch = batch_of(
        table
            .rows
            .iter()
            .zip(&table.origins)
            .zip(&keys)
            .map(|((r, origin), key)| (*origin, encode_record(r), key.as_slice())),
    );
    append_rejects(&mut batch, rejects);
    write_derived(ctx, DerivedTable { rejects_not_kept: rejects.not_kept, ..target }, header, batch)
}
