//! The folders a build reads, handed to the daemon's watcher after each build: it grows with
//! the cohort and the number of tables, never with the size of the mirror.

use std::path::{Path, PathBuf};

use crate::config::Config;
use crate::ids::{ReflacxId, SubjectId};
use crate::pipeline::context::BuildContext;
use crate::pipeline::linker::Links;
use crate::pipeline::small_table::SmallTable;

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
    let mut all = table_folders(&ctx.config);
    // Counted before they are collected: the folders of every CXR patient are 300,000 paths.
    let mut count = 0;
    each_copied_folder(&ctx.config, &ctx.links, &ctx.reflacx_phases, &mut |_, _| count += 1);
    if count > MAX_WATCHED_COPIED_FOLDERS {
        // A published dataset version's files do not change once complete: for a cohort this
        // large (every CXR patient) the tables that list them are watched, not 200,000 folders.
        tracing::info!(
            folders = count,
            "copied folders not watched (the cohort is large): a change in them is picked up by the next build"
        );
    } else {
        all.extend(copied_folders(&ctx.config, &ctx.links, &ctx.reflacx_phases));
    }
    all
}

/// The cohort's study, report, REFLACX reading and EyeGaze transcript folders, sorted: what
/// the folder jobs copy from.
fn copied_folders(config: &Config, links: &Links, reflacx_phases: &[SmallTable]) -> Vec<WatchDir> {
    let mut dirs = Vec::new();
    each_copied_folder(config, links, reflacx_phases, &mut |path, recursive| {
        dirs.push(WatchDir { path: path.to_path_buf(), recursive });
    });
    dirs.sort();
    dirs.dedup();
    dirs
}

/// Calls `each` with every folder the folder jobs copy from and whether its subfolders count
/// too, a path at a time (a folder may come twice): `--cohort cxr` has 377,000 images in
/// 227,000 studies of 65,000 subjects, and their paths are never all held at once.
pub(crate) fn each_copied_folder(
    config: &Config,
    links: &Links,
    reflacx_phases: &[SmallTable],
    each: &mut dyn FnMut(&Path, bool),
) {
    let d = &config.datasets;
    for (subject, study) in &links.studies {
        each(&d.mimic_cxr_jpg.join("files").join(cxr_subject_dir(*subject)).join(format!("s{study}")), false);
    }
    let mut subjects: Vec<SubjectId> = links.cxr_rows.iter().map(|r| r.subject).collect();
    subjects.sort_unstable();
    subjects.dedup();
    for subject in subjects {
        each(&d.mimic_cxr.join("files").join(cxr_subject_dir(subject)), false);
    }
    for table in reflacx_phases {
        let Ok(id_col) = table.require("id") else { continue };
        for row in &table.rows {
            if let Ok(id) = ReflacxId::parse(row.fields.field(id_col)) {
                each(&d.reflacx.join("main_data").join(id.as_str()), false);
                each(&d.reflacx.join("gaze_data").join(id.as_str()), false);
            }
        }
    }
    let transcripts = d.egd_cxr.join("audio_segmentation_transcripts");
    for dicom in &links.eye_gaze_dicoms {
        each(&transcripts.join(dicom.as_str()), true);
    }
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
