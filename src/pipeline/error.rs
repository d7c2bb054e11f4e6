//! The pipeline's errors: a table that cannot be read ([`ReadError`], naming the file, the
//! line or byte offset and the cause) and a table job that fails ([`JobError`]). A leaf module,
//! so the messages between actors and the actors themselves share one vocabulary.

use std::io;
use std::path::{Path, PathBuf};

use crate::source::SourceError;

/// A table that cannot be read: names the file, the byte offset and the cause. The cause is
/// part of the message, not a `source` too (an error chain would print it twice).
#[derive(Debug, thiserror::Error)]
#[error("{}: {kind}", path.display())]
pub struct ReadError {
    pub path: PathBuf,
    pub kind: ReadErrorKind,
}

#[derive(Debug, thiserror::Error)]
pub enum ReadErrorKind {
    #[error("cannot open: {0}")]
    Open(std::io::Error),
    #[error("{0}")]
    Decode(SourceError),
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
    /// The build was cancelled while the table was read.
    #[error("the read was cancelled (the build is stopping)")]
    Cancelled,
    /// The reading thread ended without finishing: a bug, said as one.
    #[error("the reading thread stopped before the end of the file: {0}")]
    ReaderDied(String),
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
    /// An input folder or file that is there but cannot be read.
    #[error("reading {}: {cause}", path.display())]
    Input { path: PathBuf, cause: io::Error },
    /// The cause names the file a rename, removal or record failed on.
    #[error("publishing {job}: {cause}")]
    Publish { job: String, cause: io::Error },
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
    /// The build was cancelled (a stop): not a failure of the table.
    #[error("cancelled: the build is stopping")]
    Cancelled,
    /// A bug, not bad input: said as such instead of as a reader that stopped.
    #[error("{task} of {table} panicked: {cause}")]
    Panicked { task: &'static str, table: String, cause: String },
}

impl ReadError {
    /// A read whose thread ended without `Done`: cancelled, or the thread's panic named (its
    /// `join` result), never taken for the end of the table.
    pub(crate) fn stopped(path: &Path, cancel: &crate::shutdown::CancelToken, joined: std::thread::Result<()>) -> Self {
        let kind = match joined {
            _ if cancel.is_cancelled() => ReadErrorKind::Cancelled,
            Err(panic) => ReadErrorKind::ReaderDied(format!("it panicked: {}", panic_text(panic.as_ref()))),
            Ok(()) => ReadErrorKind::ReaderDied("it ended without a word".into()),
        };
        ReadError { path: path.to_path_buf(), kind }
    }

    /// A gzip file that ends inside a member: a download still arriving (wget writes in place
    /// and may stall) or one cut off. The daemon takes it for the former: see
    /// [`crate::pipeline::BuildOptions::cut_short_is_pending`].
    pub(crate) fn cut_short_gzip(&self) -> Option<&Path> {
        let eof = matches!(&self.kind, ReadErrorKind::Decode(e) if e.cause.kind() == io::ErrorKind::UnexpectedEof);
        (eof && crate::source::is_gzip_name(&self.path)).then_some(self.path.as_path())
    }
}

/// A panic's message, when it has one.
fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown cause".into())
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
    /// See [`ReadError::cut_short_gzip`].
    pub(crate) fn cut_short_gzip(&self) -> Option<&Path> {
        match self {
            Self::Read(e) => e.cut_short_gzip(),
            _ => None,
        }
    }

    /// A stop, not a failure of the table.
    pub(crate) fn is_cancelled(&self) -> bool {
        matches!(self, Self::Cancelled | Self::Read(ReadError { kind: ReadErrorKind::Cancelled, .. }))
    }

    /// A thread that panicked: a bug, said as such.
    pub(crate) fn thread_panicked(task: &'static str, table: &str, panic: &(dyn std::any::Any + Send)) -> Self {
        Self::Panicked { task, table: table.to_string(), cause: panic_text(panic) }
    }

    /// A task that did not return: a panic is a bug and said so; a cancelled task is not.
    pub(crate) fn joined(task: &'static str, table: &str, e: tokio::task::JoinError) -> Self {
        match e.try_into_panic() {
            Ok(panic) => Self::Panicked { task, table: table.to_string(), cause: panic_text(panic.as_ref()) },
            Err(_) => Self::Interrupted(table.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reader_that_stopped_is_named_as_panicked_cancelled_or_silent() {
        let path = Path::new("in/labevents.csv");
        let (never, (owner, stopped)) = (crate::shutdown::CancelToken::default(), crate::shutdown::cancel_pair());
        let panic: std::thread::Result<()> = Err(Box::new("index out of bounds"));
        let e = ReadError::stopped(path, &never, panic);
        assert_eq!(
            e.to_string(),
            "in/labevents.csv: the reading thread stopped before the end of the file: it panicked: index out of bounds"
        );
        owner.cancel();
        assert!(matches!(ReadError::stopped(path, &stopped, Ok(())).kind, ReadErrorKind::Cancelled));
        assert!(ReadError::stopped(path, &never, Ok(())).to_string().contains("ended without a word"));
    }
}
