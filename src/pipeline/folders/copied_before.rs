//! The records of the copies a folder job's last publish placed, looked up as the job places
//! its files again: from the job's file list through a forward cursor (a `cxr` cohort copies
//! 377,000 images: one record in memory at a time), or from the manifest of a build before the
//! lists carried them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::pipeline::file_list::RecordCursor;
use crate::pipeline::publish::{self, CopyRecord};

pub(super) enum CopiedBefore {
    /// No earlier publish (or `--full`), or one that copied nothing.
    Nothing,
    Inline(BTreeMap<PathBuf, CopyRecord>),
    Listed(Box<RecordCursor>),
}

impl CopiedBefore {
    /// What the last publish of `job` under `output` recorded.
    pub(super) fn load(output: &Path, job: &str) -> Self {
        let Some(manifest) = publish::load_manifest(output, job) else { return Self::Nothing };
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
