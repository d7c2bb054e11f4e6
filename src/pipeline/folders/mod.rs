//! Copied folders: chest X-ray study folders, reports, REFLACX readings and EyeGaze transcripts.
//!
//! Files are hard-linked (falling back to a copy across file systems) or copied into the job's
//! staging folder and published like any table. A file whose output is already the same (same
//! inode; for a copy, a source with the identity recorded when it was copied) is not staged
//! again, so a rebuild leaves it untouched. Symbolic links are followed only when their target
//! stays inside the input tree (a link back to a folder being walked is skipped), and
//! `index.html` files from wget mirrors are never copied. One entry that cannot be read is
//! skipped, named and counted; the rest is copied. A copy (or clone) is hashed with SHA-256
//! while it is made and, when its dataset's SHA256SUMS.txt lists the source, compared with it: a
//! mismatch keeps the previous copy (if any) and fails the build.

use std::path::PathBuf;

use crate::counts::TableCounts;
use crate::pipeline::context::BuildContext;
use crate::pipeline::error::JobError;
use crate::pipeline::job_keys;
use job::FolderJob;

mod copied_before;
mod job;
mod place;
mod readings;
mod reports;

/// Syncs every copied folder of the cohort: the REFLACX readings (the most files: each
/// reading's merged ellipses are made and compared) on a thread of their own beside the rest,
/// as file system calls and small reads on two cores.
pub(crate) fn sync_all(ctx: &BuildContext) -> Result<Vec<(String, TableCounts)>, JobError> {
    let (rest, readings) = std::thread::scope(|scope| {
        let readings = scope.spawn(|| readings::sync_readings(ctx));
        let rest = sync_studies(ctx).and_then(|mut done| {
            done.push(sync_transcripts(ctx)?);
            Ok(done)
        });
        (rest, readings.join())
    });
    let readings = readings
        .map_err(|panic| JobError::thread_panicked("copied folders", job_keys::REFLACX_READINGS, panic.as_ref()))??;
    let mut done = rest?;
    done.insert(2, readings);
    Ok(done)
}

/// Chest X-ray study folders and their reports, for each study of the subset.
fn sync_studies(ctx: &BuildContext) -> Result<Vec<(String, TableCounts)>, JobError> {
    let d = &ctx.config.datasets;
    let mut jpg = FolderJob::new(ctx, job_keys::CXR_JPG)?;
    let mut reports = FolderJob::new(ctx, job_keys::CXR_REPORTS)?;
    let mut source = reports::Reports::open(crate::input::ReportsForm::of(&ctx.config), &ctx.integrity)?;
    for (subject, study) in &ctx.links.studies {
        let sdir = crate::input::cxr_subject_dir(*subject);
        jpg.folder(
            &d.mimic_cxr_jpg.join("files").join(&sdir).join(format!("s{study}")),
            &PathBuf::from(subject.folder()).join("CXR-JPG").join(format!("s{study}")),
        )?;
        let dest = PathBuf::from(subject.folder()).join("CXR-DICOM").join(format!("s{study}.txt"));
        match source.get(*subject, *study)? {
            Some(reports::Report::File(report)) => reports.file(&report, &dest, None)?,
            Some(reports::Report::Bytes(bytes)) => reports.file(&source.path(), &dest, Some(bytes))?,
            None => {}
        }
    }
    Ok(vec![jpg.publish()?, reports.publish()?])
}

/// EyeGaze audio, transcript and mask folders of each patient's images, in output path order.
fn sync_transcripts(ctx: &BuildContext) -> Result<(String, TableCounts), JobError> {
    let mut transcripts = FolderJob::new(ctx, job_keys::EYE_GAZE_TRANSCRIPTS)?;
    let root = ctx.config.datasets.egd_cxr.join("audio_segmentation_transcripts");
    let mut walks: Vec<(PathBuf, PathBuf)> = Vec::new();
    for dicom in &ctx.links.eye_gaze_dicoms {
        let Some(subject) = ctx.cohort.subject_of_dicom(dicom) else {
            continue;
        };
        let dest = PathBuf::from(subject.folder()).join("EyeGaze/audio_segmentation_transcripts").join(dicom.as_str());
        walks.push((dest, root.join(dicom.as_str())));
    }
    walks.sort_unstable();
    for (dest, src) in &walks {
        transcripts.folder(src, dest)?;
    }
    transcripts.publish()
}
