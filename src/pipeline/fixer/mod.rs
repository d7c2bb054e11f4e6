//! The fixer actors: the per-table repairs of SPEC §4, between reader and writer.
//!
//! Streaming tables that need a fix (EyeGaze `eye_gaze` and `fixations`) get a fixer stage in
//! their job. The repairs of the small side tables (stacked REFLACX metadata, the master sheet
//! with updated stays) live here too ([`reflacx`], [`eyegaze`]); `derived::side_tables` applies
//! them and writes those tables.

pub(super) mod eyegaze;
pub(super) mod reflacx;

use std::path::Path;

use crate::config::Profile;
use crate::pipeline::batch::ReadMsg;
use crate::pipeline::error::JobError;
use crate::pipeline::linker::Links;
use crate::shutdown::CancelToken;

/// A streaming fix, chosen per table.
#[derive(Debug, Clone)]
pub(super) enum FixKind {
    EyeGazeIds { profile: Profile },
}

/// The fixer actor: a fix whose decisions are made, transforming batches between reader and writer.
pub(super) struct Fixer {
    repair: eyegaze::Repair,
}

impl FixKind {
    /// EyeGaze repairs `eye_gaze` and `fixations` in `paper`, only `eye_gaze` in `release`.
    pub(super) fn for_eye_gaze(name: &str, profile: Profile) -> Option<FixKind> {
        match (name, profile) {
            ("eye_gaze", _) | ("fixations", Profile::Paper) => Some(FixKind::EyeGazeIds { profile }),
            _ => None,
        }
    }

    /// Makes the fix's decisions (a first pass over the table's ids).
    pub(super) fn prepare(&self, path: &Path, links: &Links, cancel: &CancelToken) -> Result<Fixer, JobError> {
        match self {
            FixKind::EyeGazeIds { profile } => {
                let known = links.eye_gaze_dicoms.iter().map(|d| d.as_str().to_string()).collect();
                let ids = eyegaze::distinct_ids(path, &known, cancel)?;
                let repair = eyegaze::decide(&known, &ids, *profile);
                tracing::info!(table = %path.display(), short_ids = repair.decisions.len(), "EyeGaze DICOM_ID repair decided");
                Ok(Fixer { repair })
            }
        }
    }
}

impl Fixer {
    /// The fixer loop: transforms batches until the reader is done or the writer goes away.
    pub(super) fn run(self, rx: async_channel::Receiver<ReadMsg>, tx: async_channel::Sender<ReadMsg>) {
        while let Ok(msg) = rx.recv_blocking() {
            let msg = match msg {
                ReadMsg::Batch(b) => ReadMsg::Batch(self.repair.apply(b)),
                other => other,
            };
            if tx.send_blocking(msg).is_err() {
                return;
            }
        }
    }
}
