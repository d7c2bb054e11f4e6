//! Tables removed from the input: the next build removes their outputs (logged at WARN with the
//! count, and listed in summary.json), but only on evidence that the table is really gone: its
//! folder is there, readable and not empty (an unmounted disk or an empty module folder keeps
//! every output), neither of its files is there in any form, and its dataset's SHA256SUMS.txt
//! does not list it (a listed table that is gone is missing, not removed).

use std::collections::HashSet;
use std::path::PathBuf;

use crate::config::Config;
use crate::input::Module;
use crate::pipeline::outdir::OutputDirs;
use crate::pipeline::publish;
use crate::pipeline::state::{self, Manifest};
use crate::sums::Sums;

/// The folders a table job's input may live in and the file name it has there without its
/// ending, for the jobs that read one table file (derived tables and copied folders have none).
fn source_of(config: &Config, job: &str) -> Option<(Vec<PathBuf>, String)> {
    let (prefix, name) = job.split_once('/')?;
    let d = &config.datasets;
    let dirs = match prefix {
        "hosp" => Module::Hosp.dirs(config),
        "icu" => Module::Icu.dirs(config),
        "ed" => Module::Ed.dirs(config),
        "mimic-cxr-jpg" if matches!(name, "chexpert" | "negbio" | "split") => {
            return Some((vec![d.mimic_cxr_jpg.clone()], format!("mimic-cxr-2.0.0-{name}")));
        }
        "egd-cxr" if matches!(name, "eye_gaze" | "fixations" | "bounding_boxes") => vec![d.egd_cxr.clone()],
        _ => return None,
    };
    Some((dirs, name.to_string()))
}

/// Why a table that this build did not plan still keeps its outputs, if it does.
fn still_there(config: &Config, sums: &Sums, job: &str) -> Option<String> {
    let (dirs, stem) = source_of(config, job)?;
    let main = &dirs[0];
    match std::fs::read_dir(main).map(|mut entries| entries.next().is_none()) {
        Err(_) => return Some(format!("its folder {} is missing or unreadable", main.display())),
        Ok(true) => {
            return Some(format!("its folder {} is empty (not mounted, or not downloaded yet)", main.display()))
        }
        Ok(false) => {}
    }
    for dir in &dirs {
        for ending in [".csv", ".csv.gz"] {
            let file = dir.join(format!("{stem}{ending}"));
            if std::fs::symlink_metadata(&file).is_ok() {
                return Some(format!("{} is still there", file.display()));
            }
            if sums.expected(&file).is_some() {
                return Some(format!("{} is listed in its SHA256SUMS.txt: missing, not removed", file.display()));
            }
        }
    }
    None
}

/// Removes the published files of every table job that this build did not plan and that is
/// really gone from the input (see the module doc); returns their keys.
pub(super) fn remove_vanished(
    config: &Config,
    dirs: &OutputDirs,
    sums: &Sums,
    planned: &HashSet<String>,
) -> std::io::Result<Vec<String>> {
    let mut removed = Vec::new();
    for manifest in state::manifests(&config.output) {
        if planned.contains(&manifest.job) || source_of(config, &manifest.job).is_none() {
            continue;
        }
        if let Some(why) = still_there(config, sums, &manifest.job) {
            tracing::warn!(table = %manifest.job, reason = %why, "table not found in the input, but not removed: its outputs are kept");
            continue;
        }
        tracing::warn!(table = %manifest.job, files = manifest.file_count(), "table removed from the input: removing its outputs");
        // Publishing an empty file list deletes what the job had published.
        publish::publish(&config.output, dirs, Manifest { job: manifest.job.clone(), ..Default::default() })?;
        state::forget(&config.output, &manifest.job)?;
        removed.push(manifest.job);
    }
    Ok(removed)
}
