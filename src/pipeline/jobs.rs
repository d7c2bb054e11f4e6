//! Job discovery and routing: every table found in the input becomes a table job, and a job's
//! kind plus its header decide where its rows go (per patient, whole, by dicom).

use std::path::PathBuf;

use crate::config::{Config, Profile};
use crate::input::{self, Module};
use crate::pipeline::error::JobError;
use crate::pipeline::fixer::FixKind;
use crate::pipeline::reader::TableReader;
use crate::pipeline::writer::Route;

/// What kind of table a job handles, which decides where its rows go.
#[derive(Debug, Clone)]
pub(super) enum JobKind {
    /// A MIMIC-IV / ED table: split by subject_id if it has one, else whole to spreadsheets.
    Clinical { module: Module, name: String },
    /// chexpert, negbio, split: split by subject_id and whole.
    Cxr { name: String },
    /// EyeGaze eye_gaze, fixations, bounding_boxes: split by dicom id and whole (repaired).
    EyeGaze { name: String },
}

#[derive(Debug, Clone)]
pub(super) struct TableJob {
    pub key: String,
    pub path: PathBuf,
    pub kind: JobKind,
}

/// The jobs for every table found in the input.
pub(super) fn discover_jobs(config: &Config, side: &input::LinkerTablePaths) -> std::io::Result<Vec<TableJob>> {
    let mut jobs = Vec::new();
    for module in Module::ALL {
        for (name, path) in module.tables(config)? {
            let key = format!("{}/{name}", module.key());
            jobs.push(TableJob { key, path, kind: JobKind::Clinical { module, name } });
        }
    }
    for (name, path) in &side.cxr_tables {
        jobs.push(TableJob {
            key: format!("mimic-cxr-jpg/{name}"),
            path: path.clone(),
            kind: JobKind::Cxr { name: name.clone() },
        });
    }
    for (name, path) in &side.eye_gaze_tables {
        jobs.push(TableJob {
            key: format!("egd-cxr/{name}"),
            path: path.clone(),
            kind: JobKind::EyeGaze { name: name.clone() },
        });
    }
    // Big tables first, so the long poles start early and small ones fill the gaps.
    jobs.sort_by_key(|j| std::cmp::Reverse(std::fs::metadata(&j.path).map(|m| m.len()).unwrap_or(0)));
    Ok(jobs)
}

/// Routing decided from the job kind and the header.
pub(super) struct Routing {
    pub key_column: Option<usize>,
    pub route: Route,
    pub patient_file: Option<PathBuf>,
    pub whole_file: Option<PathBuf>,
    pub fix: Option<FixKind>,
}

/// `split_before`: the previous build split this table per patient. A table known to be split
/// (by name or by that record) must have its `subject_id`: whether its rows go to patients or
/// whole to `spreadsheets/` never flips because of a damaged header.
pub(super) fn routing_for(
    job: &TableJob,
    reader: &TableReader,
    profile: Profile,
    split_before: bool,
) -> Result<Routing, JobError> {
    Ok(match &job.kind {
        JobKind::Clinical { module, name } => {
            let folder = module.folder();
            let whole = PathBuf::from("spreadsheets").join(folder).join(format!("{name}.csv"));
            let per_patient = split_before || input::is_per_patient_table(name);
            let key = if per_patient || reader.header().find("subject_id").is_some() {
                Some(reader.require("subject_id")?)
            } else {
                None
            };
            match key {
                // patients goes to spreadsheets only, as the authors did.
                Some(_) if name == "patients" => Routing {
                    key_column: None,
                    route: Route::Whole,
                    patient_file: None,
                    whole_file: Some(whole),
                    fix: None,
                },
                Some(col) => Routing {
                    key_column: Some(col),
                    route: Route::BySubject,
                    patient_file: Some(PathBuf::from(folder).join(format!("{name}.csv"))),
                    whole_file: (name == "triage").then_some(whole),
                    fix: None,
                },
                None => Routing {
                    key_column: None,
                    route: Route::Whole,
                    patient_file: None,
                    whole_file: Some(whole),
                    fix: None,
                },
            }
        }
        JobKind::Cxr { name } => Routing {
            key_column: Some(reader.require("subject_id")?),
            route: Route::BySubject,
            patient_file: Some(PathBuf::from("CXR-JPG").join(format!("cxr_{name}.csv"))),
            whole_file: Some(PathBuf::from("spreadsheets/CXR-JPG").join(format!("cxr_{name}.csv"))),
            fix: None,
        },
        JobKind::EyeGaze { name } => {
            let col = reader.require("dicom_id")?;
            // Profile release wrote fixations.csv where the whole eye_gaze table belonged.
            let whole = if profile == Profile::Release && name == "eye_gaze" {
                None
            } else {
                Some(PathBuf::from("spreadsheets/EyeGaze").join(format!("{name}.csv")))
            };
            Routing {
                key_column: Some(col),
                route: Route::ByDicom,
                patient_file: Some(PathBuf::from("EyeGaze").join(format!("{name}.csv"))),
                whole_file: whole,
                fix: FixKind::for_eye_gaze(name, profile),
            }
        }
    })
}
