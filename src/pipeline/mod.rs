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

pub mod batch;
pub mod build;
pub mod context;
pub mod counts;
pub mod derived;
pub mod error;
pub mod fixer;
pub mod folders;
pub mod jobs;
pub mod linker;
pub mod manifest;
pub mod outsums;
pub mod paths;
pub mod planner;
pub mod publish;
pub mod reader;
pub mod shrink;
pub mod summary;
pub mod table_job;
pub mod vanished;
pub mod writer;

pub use build::{build, BuildOptions, Cancelled, Pending};
pub use summary::Summary;
pub use table_job::split_one;
