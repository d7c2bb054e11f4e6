//! A derived table's output: one writer, staged and published as one job, like a table job's.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::counts::TableCounts;
use crate::pipeline::batch;
use crate::pipeline::context::BuildContext;
use crate::pipeline::error::JobError;
use crate::pipeline::manifest::InputKey;
use crate::pipeline::staging::Staging;
use crate::pipeline::state::{self, Manifest};
use crate::pipeline::writer::{Route, Writer, WriterSpec};

/// Where an in-memory derived table (cxr_meta, REFLACX metadata, master sheet) goes.
pub(super) struct DerivedTable<'a> {
    /// The job (and manifest) name.
    pub job: &'a str,
    /// The file its rows came from, named in its rejects.
    pub source: &'a Path,
    pub route: Route,
    /// Inside each patient folder, when split by subject.
    pub patient_file: Option<PathBuf>,
    /// The whole table, under the output root.
    pub whole_file: Option<PathBuf>,
    /// Malformed source records past the ones kept for the rejects file: counted only.
    pub rejects_not_kept: u64,
}

/// The key a derived table's manifest records: the settings and what the link read (`None`
/// when a linker table could not be looked at: then it is always written).
fn input_key(ctx: &BuildContext) -> Option<InputKey> {
    ctx.link_digest.as_deref().map(|digest| InputKey::derived(&ctx.config, digest))
}

/// The counts of a derived table last published from the same link and settings: its rows
/// would be the same, so it is not written again (a rebuild for a clinical change, or for
/// nothing, re-reads no CXR metadata and rewrites no per-patient file).
pub(super) fn unchanged(ctx: &BuildContext, job: &str) -> Option<TableCounts> {
    let key = input_key(ctx).filter(|_| !ctx.force_full)?;
    let last = state::load_manifest_head(&ctx.config.output, job)?;
    (last.input == key).then(|| {
        tracing::debug!(table = job, "unchanged: skipped");
        last.counts
    })
}

/// Writes a derived table's `rows` (under `header`) through a writer and publishes it as one
/// job (its caller has asked [`unchanged`] first, before making the rows).
pub(super) fn write_derived(
    ctx: &BuildContext,
    table: DerivedTable<'_>,
    header: Vec<u8>,
    rows: batch::Batch,
) -> Result<TableCounts, JobError> {
    let mut writer = DerivedWriter::open(ctx, table, header)?;
    writer.writer.write_batch(&rows)?;
    writer.publish()
}

/// A derived table being written: its writer, then its publish as one job.
pub(super) struct DerivedWriter {
    job: String,
    pub(super) writer: Writer,
    staging: Staging,
    rejects_not_kept: u64,
    input: Option<InputKey>,
}

impl DerivedWriter {
    pub(super) fn open(ctx: &BuildContext, table: DerivedTable<'_>, header: Vec<u8>) -> Result<Self, JobError> {
        let DerivedTable { job, source, route, patient_file, whole_file, rejects_not_kept } = table;
        let staging = Staging::fresh(&ctx.config.output, &ctx.dirs, job)?;
        let spec = WriterSpec {
            table: job.to_string(),
            source: source.to_path_buf(),
            header,
            index_column: ctx.config.index_column,
            route,
            patient_file,
            whole_file,
            cohort: Arc::clone(&ctx.cohort),
            staging: staging.dir().to_path_buf(),
            max_open_files: ctx.max_open_files,
            only_patients: None,
        };
        let input = input_key(ctx);
        Ok(Self { job: job.to_string(), writer: Writer::new(spec)?, staging, rejects_not_kept, input })
    }

    pub(super) fn publish(self) -> Result<TableCounts, JobError> {
        let Self { job, writer, staging, rejects_not_kept, input } = self;
        let mut outcome = writer.finish()?;
        if rejects_not_kept > 0 {
            tracing::warn!(
                table = job,
                rows = rejects_not_kept,
                "more malformed rows than the rejects file keeps: counted only"
            );
            outcome.counts.read += rejects_not_kept;
            outcome.counts.rejected += rejects_not_kept;
        }
        let input = input.unwrap_or_default();
        let manifest = Manifest { job, files: outcome.files, counts: outcome.counts, input, ..Default::default() };
        staging.publish(manifest)?;
        Ok(outcome.counts)
    }
}
