//! Where MIMIC-CXR's reports are read from: the unzipped `files/` tree, or
//! `mimic-cxr-reports.zip` (what most users download: 135 MB instead of a tree beside 4.7 TB of
//! DICOMs). The zip is read through its central directory, entry by entry, never unpacked;
//! entries are found with or without a leading `files/`. It is checked against the dataset's
//! `SHA256SUMS.txt` once, when opened.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::ids::{StudyId, SubjectId};
use crate::input::{cxr_subject_dir, ReportsForm};
use crate::pipeline::error::JobError;

/// A report larger than this is not one (a damaged or hostile entry is not read whole).
const MAX_REPORT_BYTES: u64 = 4 << 20;

/// One study's report: a file of the tree, or the bytes of a zip entry.
pub(super) enum Report {
    File(PathBuf),
    Bytes(Vec<u8>),
}

/// The reports of one build.
pub(super) enum Reports {
    Tree(PathBuf),
    Zip { path: PathBuf, archive: Box<zip::ZipArchive<fs::File>> },
    None,
}

impl Reports {
    /// Opens the form `form`; a zip whose digest differs from its listing fails (its reports
    /// keep their previous copies).
    pub(super) fn open(form: ReportsForm, integrity: &crate::integrity::Integrity) -> Result<Self, JobError> {
        match form {
            ReportsForm::Tree(files) => Ok(Self::Tree(files)),
            ReportsForm::None => Ok(Self::None),
            ReportsForm::Zip(path) => {
                let read_err = |cause: std::io::Error| JobError::Write { path: path.clone(), cause };
                if let Some(expected) = integrity.sums.expected(&path) {
                    let got = crate::sums::hash_file(&path).map_err(read_err)?;
                    if got != expected {
                        let cause = std::io::Error::new(std::io::ErrorKind::InvalidData, crate::sums::MISMATCH);
                        return Err(read_err(cause));
                    }
                }
                let file = crate::sys::open_regular(&path).map_err(read_err)?;
                let archive = zip::ZipArchive::new(file).map_err(|e| read_err(std::io::Error::other(e)))?;
                Ok(Self::Zip { path, archive: Box::new(archive) })
            }
        }
    }

    /// What the reports are read from (a zip's reports are counted as its).
    pub(super) fn path(&self) -> PathBuf {
        match self {
            Self::Tree(files) => files.clone(),
            Self::Zip { path, .. } => path.clone(),
            Self::None => PathBuf::new(),
        }
    }

    /// The report of `study`, if the dataset has one.
    pub(super) fn get(&mut self, subject: SubjectId, study: StudyId) -> Result<Option<Report>, JobError> {
        let rel = cxr_subject_dir(subject).join(format!("s{study}.txt"));
        match self {
            Self::Tree(files) => {
                let path = files.join(&rel);
                Ok(path.is_file().then_some(Report::File(path)))
            }
            Self::None => Ok(None),
            Self::Zip { path, archive } => read_entry(path, archive, &rel),
        }
    }
}

/// The entry `files/<rel>` (or `<rel>`) of the zip, read whole (a report is a few KB).
fn read_entry(
    zip_path: &Path,
    archive: &mut zip::ZipArchive<fs::File>,
    rel: &Path,
) -> Result<Option<Report>, JobError> {
    let rel = rel.to_string_lossy();
    let with_files = format!("files/{rel}");
    let Some(index) = archive.index_for_name(&with_files).or_else(|| archive.index_for_name(&rel)) else {
        return Ok(None);
    };
    let err = |cause: std::io::Error| JobError::Write { path: zip_path.to_path_buf(), cause };
    let entry = archive.by_index(index).map_err(|e| err(std::io::Error::other(e)))?;
    let mut bytes = Vec::with_capacity(entry.size().min(MAX_REPORT_BYTES) as usize);
    entry.take(MAX_REPORT_BYTES).read_to_end(&mut bytes).map_err(err)?;
    Ok(Some(Report::Bytes(bytes)))
}
