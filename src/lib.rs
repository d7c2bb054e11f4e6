//! mimic-eye: builds the MIMIC-Eye dataset from its parent datasets and keeps it current.
//!
//! Data flow (one module per actor): [`pipeline::linker`] decides the cohort and the stay links;
//! for each table a [`pipeline::reader`] streams batches of verbatim records, an optional
//! [`pipeline::fixer`] repairs them, a [`pipeline::writer`] routes them to per-patient staging
//! files, and [`pipeline::publish`] renames them into place atomically.

pub mod cohort;
pub mod config;
pub mod csvscan;
pub mod daemon;
pub mod digest;
pub mod fingerprint;
pub mod gzip;
pub mod ids;
pub mod input;
pub mod inventory;
pub mod layout;
pub mod pipeline;
pub mod progress;
pub mod pyfmt;
pub mod shutdown;
pub mod source;
pub mod sums;
pub mod synth;
pub mod sys;
pub mod telemetry;
