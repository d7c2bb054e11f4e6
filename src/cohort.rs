//! Who MIMIC-Eye is built for: the eye-tracking patients (the dataset as published), every
//! MIMIC-CXR-JPG patient, or a researcher's own list of subject_ids. The method is the same for
//! each: one folder per patient, chest X-rays linked to ED stays, images and reports beside the
//! clinical tables.

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::ids::SubjectId;

/// The cohort rule, as written in the config (`cohort = "…"`) or given with `--cohort`.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
#[serde(into = "String")]
pub enum CohortKind {
    /// SPEC §3: the patients of REFLACX and EyeGaze and their chest X-rays (the default).
    #[default]
    EyeTracking,
    /// Every subject of the MIMIC-CXR-JPG metadata, with all their images.
    Cxr,
    /// The subject_ids of a file: one per line, a header line and `#` comments allowed.
    Subjects(PathBuf),
}

impl FromStr for CohortKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "eye-tracking" => Ok(Self::EyeTracking),
            "cxr" => Ok(Self::Cxr),
            _ => match s.strip_prefix("subjects:") {
                Some(path) if !path.is_empty() => Ok(Self::Subjects(PathBuf::from(path))),
                _ => Err(format!("cohort {s:?} is not one of \"eye-tracking\", \"cxr\", \"subjects:PATH\"")),
            },
        }
    }
}

impl fmt::Display for CohortKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::EyeTracking => f.write_str("eye-tracking"),
            Self::Cxr => f.write_str("cxr"),
            Self::Subjects(p) => write!(f, "subjects:{}", p.display()),
        }
    }
}

impl From<CohortKind> for String {
    fn from(k: CohortKind) -> String {
        k.to_string()
    }
}

impl<'de> serde::Deserialize<'de> for CohortKind {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

impl CohortKind {
    /// The short name recorded in summary.json.
    pub fn name(&self) -> &'static str {
        match self {
            Self::EyeTracking => "eye-tracking",
            Self::Cxr => "cxr",
            Self::Subjects(_) => "subjects",
        }
    }
}

/// A subjects file failed to read or holds a line that is not a subject_id.
#[derive(Debug, thiserror::Error)]
pub enum SubjectsError {
    #[error("reading the subjects file {}: {cause}", path.display())]
    Read { path: PathBuf, cause: std::io::Error },
    #[error("{}: line {line} is not a subject_id ({len} bytes)", path.display())]
    Line { path: PathBuf, line: usize, len: usize },
}

/// Reads a subjects file: one subject_id per line; blank lines, `#` comments and a first line
/// that is a header (not digits) are allowed.
pub fn read_subjects(path: &Path) -> Result<HashSet<SubjectId>, SubjectsError> {
    let text =
        std::fs::read_to_string(path).map_err(|cause| SubjectsError::Read { path: path.to_path_buf(), cause })?;
    let mut subjects = HashSet::new();
    for (i, line) in text.lines().enumerate() {
        let value = line.split('#').next().unwrap_or("").trim();
        let value = value.split(',').next().unwrap_or("").trim();
        if value.is_empty() || i == 0 && !value.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let id = SubjectId::parse(value.as_bytes()).map_err(|_| SubjectsError::Line {
            path: path.to_path_buf(),
            line: i + 1,
            len: value.len(),
        })?;
        subjects.insert(id);
    }
    Ok(subjects)
}

/// The cohort rule ready for the linker: the subjects file read.
#[derive(Debug, Clone, Default)]
pub enum CohortRule {
    #[default]
    EyeTracking,
    Cxr,
    Subjects(HashSet<SubjectId>),
}

impl CohortRule {
    pub fn load(kind: &CohortKind) -> Result<Self, SubjectsError> {
        Ok(match kind {
            CohortKind::EyeTracking => Self::EyeTracking,
            CohortKind::Cxr => Self::Cxr,
            CohortKind::Subjects(path) => Self::Subjects(read_subjects(path)?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_parse_and_print() {
        for s in ["eye-tracking", "cxr", "subjects:/tmp/list.txt"] {
            assert_eq!(s.parse::<CohortKind>().unwrap().to_string(), s);
        }
        assert!("subjects:".parse::<CohortKind>().is_err());
        assert!("everyone".parse::<CohortKind>().is_err());
    }

    #[test]
    fn subjects_files_allow_a_header_comments_and_blank_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.csv");
        std::fs::write(&path, "subject_id\n# mine\n10000032\n\n10000033  # a note\n10000034,extra\n").unwrap();
        let got = read_subjects(&path).unwrap();
        assert_eq!(got.len(), 3);
        std::fs::write(&path, "10000032\n1000x\n").unwrap();
        let err = read_subjects(&path).unwrap_err().to_string();
        assert!(err.contains("line 2 is not a subject_id (5 bytes)"), "{err}");
    }
}
