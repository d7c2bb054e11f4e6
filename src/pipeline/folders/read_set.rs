//! The folders a build reads, handed to the daemon's watcher after each build: it grows with
//! the cohort and the number of tables, never with the size of the mirror.

use std::collections::BTreeSet;
use std::path::PathBuf;

use crate::config::Config;
use crate::ids::{ReflacxId, StudyId, SubjectId};
use crate::pipeline::context::BuildContext;
use crate::pipeline::linker::Links;
use crate::pipeline::reader::SmallTable;

use crate::input::cxr_subject_dir;

/// A folder the build reads files from, for the daemon's watcher: its files, and with
/// `recursive` its subfolders' too.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WatchDir {
    pub path: PathBuf,
    pub recursive: bool,
}

/// Every folder this build reads: the table folders and the dataset roots (not recursive),
/// and the cohort's study, report, reading and transcript folders. It grows with the cohort
/// and the number of tables, never with the size of the mirror.
pub(crate) fn read_folders(ctx: &BuildContext) -> Vec<WatchDir> {
    let mut dirs = copied_folders(&ctx.config, &ctx.links, &ctx.reflacx_phases);
    if dirs.len() > MAX_WATCHED_COPIED_FOLDERS {
        // A published dataset version's files do not change once complete: for a cohort this
        // large (every CXR patient) the tables that list them are watched, not 200,000 folders.
        tracing::info!(
            folders = dirs.len(),
            "copied folders not watched (the cohort is large): a change in them is picked up by the next build"
        );
        dirs.clear();
    }
    let mut all = table_folders(&ctx.config);
    all.extend(dirs);
    all
}

/// The cohort's study, report, REFLACX reading and EyeGaze transcript folders: what the folder
/// jobs copy from.
pub(crate) fn copied_folders(config: &Config, links: &Links, reflacx_phases: &[SmallTable]) -> Vec<WatchDir> {
    let d = &config.datasets;
    let flat = |path: PathBuf| WatchDir { path, recursive: false };
    // Distinct ids first, paths after: `--cohort cxr` has 377,000 images in 227,000 studies
    // of 65,000 subjects.
    let subjects: BTreeSet<SubjectId> = links.cxr_rows.iter().map(|r| r.subject).collect();
    let studies: BTreeSet<(SubjectId, StudyId)> =
        links.cxr_rows.iter().filter_map(|r| Some((r.subject, r.study?))).collect();
    let mut dirs = Vec::with_capacity(subjects.len() + studies.len());
    for (subject, study) in studies {
        dirs.push(flat(d.mimic_cxr_jpg.join("files").join(cxr_subject_dir(subject)).join(format!("s{study}"))));
    }
    for subject in subjects {
        dirs.push(flat(d.mimic_cxr.join("files").join(cxr_subject_dir(subject))));
    }
    for table in reflacx_phases {
        let Ok(id_col) = table.require("id") else { continue };
        for row in &table.rows {
            if let Ok(id) = ReflacxId::parse(row.fields.field(id_col)) {
                dirs.push(flat(d.reflacx.join("main_data").join(id.as_str())));
                dirs.push(flat(d.reflacx.join("gaze_data").join(id.as_str())));
            }
        }
    }
    let transcripts = d.egd_cxr.join("audio_segmentation_transcripts");
    for dicom in &links.eye_gaze_dicoms {
        dirs.push(WatchDir { path: transcripts.join(dicom.as_str()), recursive: true });
    }
    dirs.sort();
    dirs.dedup();
    dirs
}

/// Above this many copied folders (a cohort of tens of thousands), only the table folders are
/// watched: inotify watches are a per-user resource shared with every other program.
const MAX_WATCHED_COPIED_FOLDERS: usize = 19_000;

/// The folders holding tables, and the dataset roots: what a build reads before it knows the
/// cohort.
pub(crate) fn table_folders(config: &crate::config::Config) -> Vec<WatchDir> {
    let flat = |path: PathBuf| WatchDir { path, recursive: false };
    let mut dirs: Vec<WatchDir> = crate::input::table_folders(config).into_iter().map(flat).collect();
    dirs.extend(config.datasets.all().into_iter().map(|p| flat(p.clone())));
    if let crate::cohort::CohortKind::Subjects(list) = &config.cohort {
        // The subjects file is an input like any table.
        dirs.extend(list.parent().filter(|p| !p.as_os_str().is_empty()).map(|p| flat(p.to_path_buf())));
    }
    dirs.sort();
    dirs.dedup();
    dirs
}
