//! Wires the actors of a build: linker → (reader → fixer → writer → publish) per table.
//!
//! ```text
//!   linker ──cohort, stay links──┐
//!                                v
//!   reader ──batches──> [fixer] ──batches──> writer ──staged files──> publish
//!   (decode thread + scanner)                (per-patient buffers,     (atomic renames,
//!                                             LRU of open files)        journal, manifest)
//! ```
//!
//! [`build::build`] runs a build: [`jobs`] finds the table jobs, [`table_job`] wires each one's
//! actors, [`derived`] and [`folders`] write what the linker's tables make, [`summary`] reports.
//! Each table job is a reader, an optional fixer and a writer, each on a blocking thread,
//! connected by bounded channels of batches; tokio runs up to `parallel_tables` jobs at once.

mod batch;
mod build;
mod cohort_files;
mod context;
mod copy_record;
mod derived;
mod error;
mod file_list;
mod fixer;
pub(crate) mod folders;
mod job_keys;
mod jobs;
mod link_cache;
mod linker;
mod manifest;
mod oneshot;
mod outdir;
mod outsums;
pub(crate) mod paths;
mod planner;
pub(crate) mod publish;
pub(crate) mod read_set;
pub(crate) mod reader;
pub(crate) mod report;
mod shrink;
pub(crate) mod small_table;
mod staging;
pub(crate) mod state;
pub(crate) mod summary;
mod sums_cache;
mod table_job;
mod vanished;
mod writer;

pub use build::{build, BuildOptions};
pub(crate) use build::{Cancelled, Pending};
pub(crate) use cohort_files::{cohort_files, CohortFiles};
pub(crate) use link_cache::LinkCache;
pub use oneshot::{build_until_interrupted, Interrupted};
pub use outsums::verify as verify_output;
pub use small_table::SmallTable;
pub use state::lock_output;
pub use summary::Summary;
pub(crate) use sums_cache::SumsCache;
pub use table_job::split_one;
