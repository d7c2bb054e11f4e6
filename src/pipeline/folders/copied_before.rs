//! The records of the copies a folder job's last publish placed, looked up as the job places
//! its files again: from the job's file list through a forward cursor (a `cxr` cohort copies
//! 377,000 images: one record in memory at a time), or from the manifest of a build before the
//! lists carried them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::pipeline::file_list::RecordCursor;
use crate::pipeline::state::{self, CopyRecord};

pub(super) enum CopiedBefore {
    /// No earlier publish (or `--full`), or one that copied nothing.
    Nothing,
    Inline(BTreeMap<PathBuf, CopyRecord>),
    Listed(Box<RecordCursor>),
}

impl CopiedBefore {
    /// What the last publish of `job` under `output` recorded.
    pub(super) fn load(output: &Path, job: &str) -> Self {
        let Some(manifest) = state::load_manifest(output, job) else { return Self::Nothing };
        if !manifest.copies.is_empty() {
            return Self::Inline(manifest.copies);
        }
        match manifest.file_list.as_ref().and_then(|list| RecordCursor::new(output, list)) {
            Some(cursor) => Self::Listed(Box::new(cursor)),
            None => Self::Nothing,
        }
    }

    /// The record of the copy last placed at `rel`, if it was a copy.
    pub(super) fn get(&mut self, rel: &Path) -> Option<CopyRecord> {
        match self {
            Self::Nothing => None,
            Self::Inline(copies) => copies.get(rel).cloned(),
            Self::Listed(cursor) => cursor.get(rel),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    const COUNTS: &str = r#""counts":{"read":2,"written":2,"outside_cohort":0,"rejected":0}"#;

    /// Outputs of the build before the lists carried records: copies recorded inline in the
    /// manifest, lists of paths only under `file_list`.
    #[test]
    fn an_earlier_builds_records_are_found_and_its_plain_lists_still_read() {
        let dir = tempfile::tempdir().unwrap();
        let jobs = crate::pipeline::paths::state_dir(dir.path()).join("jobs");
        fs::create_dir_all(&jobs).unwrap();
        let record =
            r#"{"dev":1,"ino":2,"size":3,"mtime_ns":4,"ctime_ns":5,"sha256":"","copy_ino":6,"copy_mtime_ns":7}"#;
        let inline = format!(
            r#"{{"job":"files/cxr-jpg","files":[],{COUNTS},"copies":{{"patient_1/CXR-JPG/s2/a.jpg":{record}}}}}"#
        );
        fs::write(jobs.join("files__cxr-jpg.json"), inline).unwrap();
        let mut before = CopiedBefore::load(dir.path(), "files/cxr-jpg");
        let found = before.get(Path::new("patient_1/CXR-JPG/s2/a.jpg")).expect("the inline record");
        assert_eq!((found.source.ino, found.source.size, found.copy_ino), (2, 3, 6));
        assert_eq!(before.get(Path::new("patient_1/CXR-JPG/s2/b.jpg")), None);

        fs::write(jobs.join("files__reflacx.old.files"), b"p/a\0p/b\0").unwrap();
        let plain = format!(
            r#"{{"job":"files/reflacx","files":[],{COUNTS},"file_list":{{"name":"files__reflacx.old.files","count":2}}}}"#
        );
        fs::write(jobs.join("files__reflacx.json"), plain).unwrap();
        assert!(matches!(CopiedBefore::load(dir.path(), "files/reflacx"), CopiedBefore::Nothing));
        let manifest = state::load_manifest(dir.path(), "files/reflacx").unwrap();
        let paths: Vec<PathBuf> = manifest.each_file(dir.path()).unwrap().map(Result::unwrap).collect();
        assert_eq!(paths, [PathBuf::from("p/a"), PathBuf::from("p/b")]);
        // Written again under the key an older binary does not read.
        let text = serde_json::to_string(&manifest).unwrap();
        assert!(text.contains(r#""list":{"name":"files__reflacx.old.files""#), "{text}");
    }
}
