//! The counts a build reports: each table's row balance and how copied files were placed.
//! A leaf module: the writer, publish, telemetry and the summary all speak these types.

/// The row balance of one table: read = written + outside_cohort + rejected.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TableCounts {
    pub read: u64,
    pub written: u64,
    pub outside_cohort: u64,
    pub rejected: u64,
}

/// How the copied folders' files are placed, for the summary: the counts add up to the files
/// the folder jobs have in the output.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct FileStats {
    pub linked: u64,
    pub copied: u64,
    pub reflinked: u64,
    pub symlinked: u64,
    /// Written by the build rather than placed (REFLACX ellipses files merged in `paper`).
    pub written: u64,
    pub linked_bytes: u64,
    pub copied_bytes: u64,
    pub reflinked_bytes: u64,
    /// Of the files above, those already in place from an earlier build and kept as they were
    /// (not linked, copied or written again).
    pub kept: u64,
    /// The first hard link or clone that failed this build (then files were copied), and why.
    pub link_failure: Option<String>,
}

impl FileStats {
    pub(crate) fn count_copy(&mut self, reflink: bool, bytes: u64) {
        if reflink {
            self.reflinked += 1;
            self.reflinked_bytes += bytes;
        } else {
            self.copied += 1;
            self.copied_bytes += bytes;
        }
    }
}
