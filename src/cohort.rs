//! Who MIMIC-Eye is built for: the eye-tracking patients (the dataset as published), every
//! MIMIC-CXR-JPG patient, or a researcher's own list of subject_ids. The method is the same for
//! each: one folder per patient, chest X-rays linked to ED stays, images and reports beside the
//! clinical tables.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::ids::{DicomId, IdBuildHasher, SubjectId};

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
pub(crate) enum SubjectsError {
    #[error("reading the subjects file {}: {cause}", path.display())]
    Read { path: PathBuf, cause: std::io::Error },
    #[error("{}: line {line} is not a subject_id ({len} bytes)", path.display())]
    Line { path: PathBuf, line: usize, len: usize },
}

/// A subjects file larger than this is refused: MIMIC-IV has about 300,000 patients, a line
/// each of at most about 20 bytes.
const MAX_SUBJECTS_FILE_BYTES: u64 = 64 << 20;

/// Reads a subjects file: one subject_id per line; blank lines, `#` comments and a first line
/// that is a header (not digits) are allowed, and the ways people's tools save it: a UTF-8 BOM
/// (spreadsheet exports), CRLF line ends (Windows editors), a trailing `,extra` column. It must
/// be a regular file (a FIFO would hang the build) of a bounded size; it is read a line at a
/// time, keeping only the ids.
pub(crate) fn read_subjects(path: &Path) -> Result<SubjectList, SubjectsError> {
    use std::io::{BufRead, Read};
    let read_err = |cause| SubjectsError::Read { path: path.to_path_buf(), cause };
    let file = crate::sys::open_regular(path).map_err(read_err)?;
    let size = file.metadata().map_err(read_err)?.len();
    if size > MAX_SUBJECTS_FILE_BYTES {
        return Err(read_err(std::io::Error::other(format!(
            "{size} bytes, more than the {MAX_SUBJECTS_FILE_BYTES} a list of subject_ids can need"
        ))));
    }
    let reader = std::io::BufReader::new(file.take(MAX_SUBJECTS_FILE_BYTES));
    let mut subjects = Vec::new();
    for (i, line) in reader.split(b'\n').enumerate() {
        let line = line.map_err(read_err)?;
        let line = if i == 0 { line.strip_prefix("\u{feff}".as_bytes()).unwrap_or(&line) } else { &line[..] };
        let value = line.split(|&b| b == b'#').next().unwrap_or(b"");
        let value = value.split(|&b| b == b',').next().unwrap_or(b"").trim_ascii();
        if value.is_empty() || i == 0 && !value.iter().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let id = SubjectId::parse(value).map_err(|_| SubjectsError::Line {
            path: path.to_path_buf(),
            line: i + 1,
            len: value.len(),
        })?;
        subjects.push(id);
    }
    Ok(SubjectList::new(subjects))
}

/// A subjects file's ids, sorted without repeats: 8 bytes an id (a hash set costs about twice
/// that), looked up by binary search.
#[derive(Debug, Clone, Default)]
pub(crate) struct SubjectList(Vec<SubjectId>);

impl SubjectList {
    fn new(mut ids: Vec<SubjectId>) -> Self {
        ids.sort_unstable();
        ids.dedup();
        ids.shrink_to_fit();
        Self(ids)
    }

    pub(crate) fn contains(&self, id: &SubjectId) -> bool {
        self.0.binary_search(id).is_ok()
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &SubjectId> {
        self.0.iter()
    }

    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }
}

/// The cohort rule ready for the linker: the subjects file read.
#[derive(Debug, Clone, Default)]
pub(crate) enum CohortRule {
    #[default]
    EyeTracking,
    Cxr,
    Subjects(SubjectList),
}

impl CohortRule {
    /// A subjects list's size and an order-free hash of its ids; zero for the other rules.
    pub(crate) fn fingerprint(&self) -> (usize, u64) {
        match self {
            Self::Subjects(ids) => {
                let hash = ids
                    .iter()
                    .fold(0u64, |h, id| h.wrapping_add(crate::fingerprint::Fnv::default().u64(id.get()).finish()));
                (ids.len(), hash)
            }
            _ => (0, 0),
        }
    }

    pub(crate) fn load(kind: &CohortKind) -> Result<Self, SubjectsError> {
        Ok(match kind {
            CohortKind::EyeTracking => Self::EyeTracking,
            CohortKind::Cxr => Self::Cxr,
            CohortKind::Subjects(path) => Self::Subjects(read_subjects(path)?),
        })
    }
}

/// Who is in the dataset, and which patient each image belongs to.
#[derive(Debug, Default, Clone)]
pub struct Cohort {
    subjects: HashSet<SubjectId, IdBuildHasher>,
    /// A bit per hash slot of the members: every row of a big table asks "is this subject in
    /// the cohort?", and for the ~99% that are not one test of this L1-resident bitmap says no
    /// (a set lookup per row was the writer's hottest code on shuffled tables).
    filter: Vec<u64>,
    /// log2 of the filter's bits: it grows with the cohort (about 64 bits a member).
    filter_bits: u32,
    pub(crate) dicom_subject: HashMap<DicomId, SubjectId>,
}

/// 2^18 bits (32 KiB): about 1% false hits for 3,000 members.
const MIN_FILTER_BITS: u32 = 18;
/// 2^24 bits (2 MiB): past a quarter of a million members the set decides anyway.
const MAX_FILTER_BITS: u32 = 24;

impl Cohort {
    /// A cohort of exactly these subjects.
    pub fn from_subjects(subjects: impl IntoIterator<Item = SubjectId>) -> Self {
        let mut cohort = Self::default();
        subjects.into_iter().for_each(|s| cohort.insert(s));
        cohort
    }

    pub(crate) fn insert(&mut self, s: SubjectId) {
        self.subjects.insert(s);
        let wanted = (self.subjects.len() as u64 * 64).next_power_of_two().trailing_zeros();
        let wanted = wanted.clamp(MIN_FILTER_BITS, MAX_FILTER_BITS);
        if self.filter.is_empty() || wanted > self.filter_bits {
            self.rebuild_filter(wanted);
        } else {
            self.mark(s);
        }
    }

    fn rebuild_filter(&mut self, bits: u32) {
        self.filter_bits = bits;
        self.filter = vec![0; 1 << (bits - 6)];
        let members: Vec<SubjectId> = self.subjects.iter().copied().collect();
        members.into_iter().for_each(|m| self.mark(m));
    }

    fn slot(&self, s: SubjectId) -> usize {
        (s.get().wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - self.filter_bits)) as usize
    }

    fn mark(&mut self, s: SubjectId) {
        let slot = self.slot(s);
        self.filter[slot >> 6] |= 1 << (slot & 63);
    }

    #[inline]
    pub(crate) fn contains(&self, s: SubjectId) -> bool {
        if self.filter.is_empty() {
            return false;
        }
        let slot = self.slot(s);
        match self.filter.get(slot >> 6) {
            Some(word) if word & (1 << (slot & 63)) != 0 => self.subjects.contains(&s),
            _ => false,
        }
    }

    pub(crate) fn subject_of_dicom(&self, d: &DicomId) -> Option<SubjectId> {
        self.dicom_subject.get(d).copied()
    }

    /// How many subjects.
    pub fn len(&self) -> usize {
        self.subjects.len()
    }

    /// No subject at all.
    pub fn is_empty(&self) -> bool {
        self.subjects.is_empty()
    }

    /// Its subjects, in no particular order.
    pub fn subjects(&self) -> impl Iterator<Item = SubjectId> + '_ {
        self.subjects.iter().copied()
    }

    pub(crate) fn dicoms(&self) -> impl Iterator<Item = (&DicomId, SubjectId)> + '_ {
        self.dicom_subject.iter().map(|(d, s)| (d, *s))
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
        // A spreadsheet export: BOM before the first id, CRLF line ends.
        std::fs::write(&path, "\u{feff}10000032\r\n10000033\r\n").unwrap();
        assert_eq!(read_subjects(&path).unwrap().len(), 2, "the BOM hid the first id");
        std::fs::write(&path, "10000032\n1000x\n").unwrap();
        let err = read_subjects(&path).unwrap_err().to_string();
        assert!(err.contains("line 2 is not a subject_id (5 bytes)"), "{err}");
    }

    #[test]
    fn cohort_membership_is_exact_behind_its_filter() {
        let sid = |v: u64| SubjectId::parse(v.to_string().as_bytes()).unwrap();
        let members: Vec<u64> = (0..3000u64).map(|i| 10_000_000 + i * 3331).collect();
        let cohort = Cohort::from_subjects(members.iter().map(|&v| sid(v)));
        assert!(members.iter().all(|&v| cohort.contains(sid(v))));
        let set: std::collections::HashSet<u64> = members.iter().copied().collect();
        let outsiders = (10_000_000..20_000_000u64).step_by(7).filter(|v| !set.contains(v));
        assert_eq!(outsiders.filter(|&v| cohort.contains(sid(v))).count(), 0);
        assert!(!Cohort::default().contains(sid(10_000_000)));
    }

    #[test]
    fn the_filter_grows_with_a_large_cohort_and_stays_exact() {
        let sid = |v: u64| SubjectId::parse(v.to_string().as_bytes()).unwrap();
        let members: Vec<u64> = (0..65_000u64).map(|i| 10_000_000 + i * 97).collect();
        let cohort = Cohort::from_subjects(members.iter().map(|&v| sid(v)));
        assert!(cohort.filter_bits > MIN_FILTER_BITS);
        assert!(members.iter().all(|&v| cohort.contains(sid(v))));
        assert!(!(10_000_001..10_100_000u64).filter(|v| (v - 10_000_000) % 97 != 0).any(|v| cohort.contains(sid(v))));
    }
}
