//! The pipeline's errors: a table that cannot be read ([`ReadError`], naming the file, the
//! line or byte offset and the cause) and a table job that fails ([`JobError`]). A leaf module,
//! so the messages between actors and the actors themselves share one vocabulary.

use std::io;
use std::path::{Path, PathBuf};

use crate::source::SourceError;

/// A table that cannot be read: names the file, the byte offset and the cause.
#[derive(Debug, thiserror::Error)]
#[error("{}: {kind}", path.display())]
pub struct ReadError {
    pub path: PathBuf,
    #[source]
    pub kind: ReadErrorKind,
}

#[derive(Debug, thiserror::Error)]
pub enum ReadErrorKind {
    #[error("cannot open: {0}")]
    Open(#[source] std::io::Error),
    #[error("{0}")]
    Decode(#[source] SourceError),
    #[error("the file is empty (no header line)")]
    Empty,
    #[error("not a CSV file: the header line holds NUL bytes")]
    NotCsv,
    /// Names the column and the header's shape, never its text: a headerless file's first
    /// line is a patient's row.
    #[error("missing required column {column:?} (the header has {fields} columns)")]
    MissingColumn { column: String, fields: usize },
    #[error("line 1 does not look like a header: {fields} fields, none of them {column:?}")]
    NoHeader { column: String, fields: usize },
    #[error("column {column:?} appears {count} times in the header")]
    DuplicateColumn { column: String, count: usize },
    #[error("a record starting at line {line} is longer than {max} bytes (unterminated quote?)")]
    RecordTooLong { line: u64, max: usize },
    /// A second read of a table (cxr_meta re-reads the CXR metadata) found other rows.
    #[error("the file changed while the build read it; the next build reads it again")]
    ChangedDuringBuild,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum JobError {
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error("writing {}: {cause}", path.display())]
    Write { path: PathBuf, cause: io::Error },
    #[error(
        "{}: the header has {columns} columns but most of the {rows} data rows have another number: the header does not fit the data",
        path.display()
    )]
    HeaderMismatch { path: PathBuf, columns: usize, rows: u64 },
    /// A table that lost most of its rows since the last build (a header-only re-download):
    /// publishing it would delete most patients' files.
    #[error(
        "{}: {now} rows where the previous build had {before}; a table that loses most of its rows is held back and its previous output kept (if the shrink is deliberate, run `mimic-eye build --accept-shrink` once)",
        path.display()
    )]
    Shrunk { path: PathBuf, before: u64, now: u64 },
    #[error("{0}: the reader stopped without finishing")]
    Interrupted(String),
    /// A bug, not bad input: said as such instead of as a reader that stopped.
    #[error("{task} of {table} panicked: {cause}")]
    Panicked { task: &'static str, table: String, cause: String },
}

/// `io::Result` → `JobError::Write` naming the path: `fs::create_dir_all(&dir).at(&dir)?`.
pub(super) trait At<T> {
    fn at(self, path: &Path) -> Result<T, JobError>;
}

impl<T> At<T> for io::Result<T> {
    fn at(self, path: &Path) -> Result<T, JobError> {
        self.map_err(|cause| JobError::Write { path: path.to_path_buf(), cause })
    }
}

impl JobError {
    /// A task that did not return: a panic is a bug and said so; a cancelled task is not.
    pub(crate) fn joined(task: &'static str, table: &str, e: tokio::task::JoinError) -> Self {
        match e.try_into_panic() {
            Ok(panic) => {
                let cause = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown cause".into());
                Self::Panicked { task, table: table.to_string(), cause }
            }
            Err(_) => Self::Interrupted(table.to_string()),
        }
    }
}
