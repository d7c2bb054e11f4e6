//! Tables removed from the input: the next build removes their outputs (logged, and listed in
//! summary.json), but only while the folder they came from is there and readable, so an
//! unmounted disk or a missing dataset never wipes the output.

use std::collections::HashSet;
use std::path::PathBuf;

use crate::config::Config;
use crate::input::Module;
use crate::pipeline::publish::{self, Manifest};

/// The folder a table job's input lives in, for the jobs that read one table file
/// (derived tables and copied folders have none).
fn source_dir(config: &Config, job: &str) -> Option<PathBuf> {
    let (prefix, name) = job.split_once('/')?;
    let d = &config.datasets;
    match prefix {
        "hosp" => Some(Module::Hosp.dir(config)),
        "icu" => Some(Module::Icu.dir(config)),
        "ed" => Some(Module::Ed.dir(config)),
        "mimic-cxr-jpg" if matches!(name, "chexpert" | "negbio" | "split") => Some(d.mimic_cxr_jpg.clone()),
        "egd-cxr" if matches!(name, "eye_gaze" | "fixations" | "bounding_boxes") => Some(d.egd_cxr.clone()),
        _ => None,
    }
}

/// Removes the published files of every table job that this build did not plan, whose source
/// folder is present and readable; returns their keys.
pub(super) fn remove_vanished(config: &Config, planned: &HashSet<String>) -> std::io::Result<Vec<String>> {
    let mut removed = Vec::new();
    for manifest in publish::manifests(&config.output) {
        if planned.contains(&manifest.job) {
            continue;
        }
        let Some(dir) = source_dir(config, &manifest.job) else { continue };
        if std::fs::read_dir(&dir).is_err() {
            tracing::warn!(table = %manifest.job, folder = %dir.display(), "table folder missing or unreadable: its outputs are kept");
            continue;
        }
        tracing::info!(table = %manifest.job, files = manifest.file_count(), "table removed from the input: removing its outputs");
        // Publishing an empty file list deletes what the job had published.
        publish::publish(&config.output, Manifest { job: manifest.job.clone(), ..Default::default() })?;
        publish::forget(&config.output, &manifest.job)?;
        removed.push(manifest.job);
    }
    Ok(removed)
}
