//! REFLACX reading folders: each reading's main data and gaze samples, the anomaly ellipses
//! file merged in profile `paper` (its three merged labels), written back with its line ends.

use std::fs;
use std::path::{Path, PathBuf};

use super::job::{sorted_entries, FolderJob};
use crate::config::Profile;
use crate::counts::TableCounts;
use crate::ids::{ReflacxId, SubjectId};
use crate::pipeline::context::BuildContext;
use crate::pipeline::error::JobError;
use crate::pipeline::fixer::reflacx;
use crate::pipeline::job_keys;
use crate::pipeline::small_table::SmallTable;

/// REFLACX reading folders (ellipses merged in profile paper) and gaze samples, walked in the
/// order of their output paths (the tables list readings in another): the job's file list is
/// then written in order, and the last build's copy records read forward.
pub(super) fn sync_readings(ctx: &BuildContext) -> Result<(String, TableCounts), JobError> {
    let d = &ctx.config.datasets;
    let mut readings = FolderJob::new(ctx, job_keys::REFLACX_READINGS)?;
    let mut walks: Vec<(PathBuf, PathBuf, bool)> = Vec::new();
    for table in &ctx.reflacx_phases {
        let phase = &table.path;
        let (id_col, s_col) = (table.require("id")?, table.require("subject_id")?);
        for row in &table.rows {
            let raw_id = row.fields.field(id_col);
            let id = match ReflacxId::parse(raw_id) {
                Ok(id) => id,
                Err(e) => {
                    readings.reject("REFLACX id", &format!("{}: line {}: {e}", phase.display(), row.line));
                    continue;
                }
            };
            let subject = SubjectId::parse(row.fields.field(s_col));
            // A reading of a subject outside the cohort (a subjects-file cohort) is not copied.
            let Some(subject) = subject.ok().filter(|s| ctx.cohort.contains(*s)) else {
                continue;
            };
            let dest = PathBuf::from(subject.folder()).join("REFLACX");
            for (part, is_main) in [("main_data", true), ("gaze_data", false)] {
                walks.push((dest.join(part).join(id.as_str()), d.reflacx.join(part).join(id.as_str()), is_main));
            }
        }
    }
    walks.sort_unstable();
    walks.dedup();
    for (dest, src, is_main) in &walks {
        match is_main {
            true => sync_reading(&mut readings, src, dest, ctx.config.profile)?,
            false => readings.folder(src, dest)?,
        }
    }
    readings.publish()
}

/// One REFLACX reading folder: files copied, except the merged ellipses file in `paper`.
fn sync_reading(job: &mut FolderJob, src: &Path, dest: &Path, profile: Profile) -> Result<(), JobError> {
    if profile == Profile::Release {
        return job.folder(src, dest);
    }
    for entry in sorted_entries(src)? {
        let name = entry.file_name();
        if name.eq_ignore_ascii_case("index.html") {
            continue;
        }
        let path = entry.path();
        // One look at each entry: its metadata serves the placement too.
        let Some(meta) = job.resolve(&path) else { continue };
        if meta.is_dir() {
            job.folder(&path, &dest.join(&name))?;
        } else if meta.is_file() && name == "anomaly_location_ellipses.csv" {
            let table =
                SmallTable::read_checked(&path, job.ctx.integrity.table_check_file(&path), &job.ctx.cancel, |_, _| {
                    true
                })?;
            // Written back with the line ends it came with: a read that fails fails the job.
            let bytes = fs::read(&path).map_err(|cause| JobError::Input { path: path.clone(), cause })?;
            let crlf = bytes.windows(2).any(|w| w == b"\r\n");
            let merged = reflacx::merge(&reflacx::Columns::of(&table), reflacx::any_true);
            job.file_of(&path, Some(&meta), &dest.join(&name), Some(reflacx::encode(&merged, crlf)))?;
        } else if meta.is_file() {
            job.file_of(&path, Some(&meta), &dest.join(&name), None)?;
        }
    }
    Ok(())
}
