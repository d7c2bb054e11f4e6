//! mimic-eye: builds the MIMIC-Eye dataset from its parent datasets and keeps it current.
//!
//! Data flow (one module per actor): [`pipeline::linker`] decides the cohort and the stay links;
//! for each table a [`pipeline::reader`] streams batches of verbatim records, an optional
//! [`pipeline::fixer`] repairs them, a [`pipeline::writer`] routes them to per-patient staging
//! files, and [`pipeline::publish`] renames them into place atomically.

#![warn(unreachable_pub, missing_docs)]

pub mod cli;
mod cohort;
mod config;
pub(crate) mod counts;
pub mod csvscan;
mod daemon;
mod digest;
mod fetch;
mod fetched;
mod fingerprint;
pub mod gzip;
mod ids;
mod input;
mod integrity;
mod inventory;
mod layout;
mod pipeline;
mod progress;
mod pyfmt;
mod shutdown;
mod source;
mod sums;
mod sumscheck;
pub mod synth;
mod sys;
mod telemetry;
mod validate;
pub mod version;
mod walk;

pub use cohort::{Cohort, CohortKind};
pub use config::{Config, ConfigFile, Overrides, Profile};
pub use daemon::run as run_daemon;
pub use digest::hex;
pub use fetch::{fetch, FetchOptions, Totals as FetchTotals};
pub use ids::SubjectId;
pub use inventory::Inventory;
pub use pipeline::{build, build_until_interrupted, split_one, BuildOptions, Interrupted, Summary};
pub use pipeline::{lock_output, verify_output, SmallTable};
pub use progress::{LogWriter, ProgressBars};
pub use source::{Sha256Check, Source};
pub use sys::{init_process, peak_rss_bytes};
pub use telemetry::bounded_text;
pub use validate::validate;
