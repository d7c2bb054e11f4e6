//! The shared, read-only context of one build: the settings, the cohort and links, the
//! linker's small tables, the open-file budget and the cancellation token every actor holds.

use std::sync::Arc;

use crate::cohort::Cohort;
use crate::config::Config;
use crate::pipeline::linker::Links;
use crate::pipeline::small_table::SmallTable;
use crate::progress::ProgressBars;
use crate::shutdown::CancelToken;

/// Shared, read-only context of a build.
pub(crate) struct BuildContext {
    pub config: Config,
    /// Cancelled to stop the build (readers stop, nothing unfinished is published); every
    /// actor holds a clone until it ends.
    pub cancel: CancelToken,
    /// Ignore manifests: rewrite everything.
    pub force_full: bool,
    /// Publish tables that lost most of their rows since the last build.
    pub accept_shrink: bool,
    pub cohort: Arc<Cohort>,
    pub links: Arc<Links>,
    /// The SHA-256 of everything the link read (`None`: a linker table could not be looked
    /// at): derived tables whose manifest records the same are not written again.
    pub link_digest: Option<String>,
    pub progress: ProgressBars,
    pub max_open_files: usize,
    /// The linker's REFLACX phases and EyeGaze master sheet, read once and reused by the fixer
    /// and the folder sync.
    pub reflacx_phases: Vec<SmallTable>,
    pub master_sheet: Option<SmallTable>,
    /// The datasets' SHA256SUMS.txt and what this build's reads and copies found.
    pub integrity: Arc<crate::integrity::Integrity>,
    /// The output folders this build has checked or made (see `outdir::OutputDirs`).
    pub dirs: Arc<crate::pipeline::outdir::OutputDirs>,
}

/// Raises the soft open-file limit to the hard one; returns how many output files to keep open.
pub(super) fn raise_open_file_limit() -> usize {
    let limit = crate::sys::raise_open_file_limit() as usize;
    // Leave room for inputs, sockets and the other jobs running at once.
    (limit.saturating_sub(OPEN_FILES_RESERVED) / OPEN_FILES_SHARES).clamp(16, MAX_OPEN_OUTPUT_FILES)
}

/// Descriptors kept for inputs, sockets and the state folder.
const OPEN_FILES_RESERVED: usize = 64;
/// The table jobs and their readers share the rest.
const OPEN_FILES_SHARES: usize = 4;
/// More open output files than this buys nothing (the LRU already hits).
const MAX_OPEN_OUTPUT_FILES: usize = 4096;
