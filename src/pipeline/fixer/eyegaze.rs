//! EyeGaze DICOM_ID repair (SPEC §4): cut-short ids are dropped, replaced or rejected.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use crate::config::Profile;
use crate::csvscan::Span;
use crate::ids::DicomId;
use crate::pipeline::batch::{drain, Batch, BatchPool, Defect, Unfinished};
use crate::pipeline::error::JobError;
use crate::pipeline::error::ReadError;
use crate::pipeline::reader::TableReader;
use crate::shutdown::CancelToken;

/// What happens to the rows of one short id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Decision {
    Replace(Vec<u8>),
    Reject(Defect),
}

/// The repair of one table, decided from a first pass over its ids.
#[derive(Debug, Clone, Default)]
pub(crate) struct Repair {
    pub decisions: HashMap<Vec<u8>, Decision>,
    /// For a short id that prefixes no master-sheet id (so it was never collected): rejected
    /// for having no candidate (`paper`) or as unrepaired (`release`).
    pub undecided: Option<Defect>,
}

/// Decides every short id of a table. `valid_known` are the master sheet's ids; `in_table` are
/// the distinct ids of the table itself.
pub(crate) fn decide(valid_known: &BTreeSet<String>, in_table: &BTreeSet<Vec<u8>>, profile: Profile) -> Repair {
    let table_valid: BTreeSet<String> =
        in_table.iter().filter(|k| DicomId::is_valid(k)).map(|k| String::from_utf8_lossy(k).into_owned()).collect();
    let candidates_of = |short: &str| -> Vec<&String> {
        let mut c: Vec<&String> = valid_known
            .range(short.to_string()..)
            .take_while(|v| v.starts_with(short))
            .chain(table_valid.range(short.to_string()..).take_while(|v| v.starts_with(short)))
            .collect();
        c.sort();
        c.dedup();
        c
    };
    let mut decisions = HashMap::new();
    for key in in_table.iter().filter(|k| DicomId::is_valid_prefix(k)) {
        let short = String::from_utf8_lossy(key);
        let candidates = candidates_of(&short);
        let decision = match (candidates.as_slice(), profile) {
            ([one], _) if table_valid.contains(*one) => Decision::Reject(Defect::ShortIdDuplicate),
            ([one], Profile::Paper) => Decision::Replace(one.as_bytes().to_vec()),
            (_, Profile::Release) => Decision::Reject(Defect::ShortIdUnrepaired),
            ([], Profile::Paper) => Decision::Reject(Defect::ShortIdNoCandidate),
            (_, Profile::Paper) => Decision::Reject(Defect::ShortIdAmbiguous),
        };
        decisions.insert(key.clone(), decision);
    }
    let undecided = match profile {
        Profile::Paper => Defect::ShortIdNoCandidate,
        Profile::Release => Defect::ShortIdUnrepaired,
    };
    Repair { decisions, undecided: Some(undecided) }
}

/// Whether `id` can take part in a repair against the master sheet's ids: one of them, or a
/// cut-short prefix of one.
fn can_match(id: &[u8], known: &BTreeSet<String>) -> bool {
    let Ok(text) = std::str::from_utf8(id) else { return false };
    if DicomId::is_valid(id) {
        return known.contains(text);
    }
    DicomId::is_valid_prefix(id) && known.range(text.to_string()..).next().is_some_and(|k| k.starts_with(text))
}

/// First pass: the distinct DICOM_IDs of the table that can match a master-sheet id (at most
/// 44 per master-sheet id, whatever the table holds: millions of distinct hostile ids cost no
/// memory).
pub(crate) fn distinct_ids(
    path: &Path,
    known: &BTreeSet<String>,
    cancel: &CancelToken,
) -> Result<BTreeSet<Vec<u8>>, JobError> {
    let reader = TableReader::open(path)?;
    let col = reader.require("dicom_id")?;
    let (tx, rx) = async_channel::bounded(4);
    let token = cancel.clone();
    let handle = std::thread::spawn(move || reader.stream_until(Some(col), &tx, &token, &BatchPool::new(1)));
    let mut ids = BTreeSet::new();
    let mut last: Vec<u8> = Vec::new();
    let drained = drain(&rx, |b| {
        for r in b.records.iter().filter(|r| r.defect.is_none()) {
            let key = r.key.slice(&b.data);
            if key != last.as_slice() {
                last.clear();
                last.extend_from_slice(key);
                if !ids.contains(key) && can_match(key, known) {
                    ids.insert(key.to_vec());
                }
            }
        }
        Ok::<_, JobError>(())
    });
    drop(rx);
    let joined = handle.join();
    match drained {
        Ok(_) => Ok(ids),
        Err(Unfinished::Consumer(e)) => Err(e),
        Err(Unfinished::Read(e)) => Err(e.into()),
        Err(Unfinished::Stopped) => Err(ReadError::stopped(path, cancel, joined).into()),
    }
}

impl Repair {
    /// Applies the decisions to one batch: rejected rows get a defect, replaced rows are rewritten.
    pub(crate) fn apply(&self, batch: Batch) -> Batch {
        let mut needs_rewrite = false;
        let mut batch = batch;
        for r in batch.records.iter_mut().filter(|r| r.defect.is_none()) {
            let key = r.key.slice(&batch.data);
            match self.decisions.get(key) {
                Some(Decision::Reject(d)) => r.defect = Some(*d),
                Some(Decision::Replace(_)) => needs_rewrite = true,
                None if DicomId::is_valid_prefix(key) => r.defect = self.undecided,
                None => {}
            }
        }
        if !needs_rewrite {
            return batch;
        }
        // Rebuild the buffer with the full ids spliced in; other records are copied unchanged.
        let mut data = Vec::with_capacity(batch.data.len() + 4096);
        for r in batch.records.iter_mut() {
            let old = batch.data.as_slice();
            let start = data.len() as u32;
            let replacement = match (r.defect, self.decisions.get(r.key.slice(old))) {
                (None, Some(Decision::Replace(full))) => Some(full),
                _ => None,
            };
            match replacement {
                Some(full) => {
                    let (ks, ke) = (r.key.start as usize, r.key.end as usize);
                    data.extend_from_slice(&old[r.span.start as usize..ks]);
                    let key_start = data.len() as u32;
                    data.extend_from_slice(full);
                    let key_end = data.len() as u32;
                    data.extend_from_slice(&old[ke..r.span.end as usize]);
                    r.key = Span { start: key_start, end: key_end };
                }
                None => {
                    let shift = |p: u32| p - r.span.start + start;
                    data.extend_from_slice(r.span.slice(old));
                    r.key = Span { start: shift(r.key.start), end: shift(r.key.end) };
                }
            }
            r.span = Span { start, end: data.len() as u32 };
        }
        batch.data = data;
        batch
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL_A: &str = "aaaaaaaa-bbbbbbbb-cccccccc-dddddddd-eeeeeeee";
    const FULL_B: &str = "aaaaaaaa-bbbbbbbb-cccccccc-dddddddd-ffffffff";
    const FULL_C: &str = "12345678-bbbbbbbb-cccccccc-dddddddd-eeeeeeee";

    fn set(v: &[&str]) -> BTreeSet<Vec<u8>> {
        v.iter().map(|s| s.as_bytes().to_vec()).collect()
    }

    #[test]
    fn each_repair_case() {
        let known: BTreeSet<String> = [FULL_A, FULL_B, FULL_C].iter().map(|s| s.to_string()).collect();
        let table = set(&[
            FULL_C,
            "12345678-bbbb",
            "aaaaaaaa-bbbbbbbb-cccccccc-dddddddd-e",
            "aaaaaaaa-bbbb",
            "99999999-aa",
            &format!("{FULL_A}_calibration"),
        ]);
        let r = decide(&known, &table, Profile::Paper);
        assert_eq!(r.decisions[b"12345678-bbbb".as_slice()], Decision::Reject(Defect::ShortIdDuplicate));
        assert_eq!(
            r.decisions[b"aaaaaaaa-bbbbbbbb-cccccccc-dddddddd-e".as_slice()],
            Decision::Replace(FULL_A.as_bytes().to_vec())
        );
        assert_eq!(r.decisions[b"aaaaaaaa-bbbb".as_slice()], Decision::Reject(Defect::ShortIdAmbiguous));
        assert_eq!(r.decisions[b"99999999-aa".as_slice()], Decision::Reject(Defect::ShortIdNoCandidate));
        assert!(!r.decisions.contains_key(format!("{FULL_A}_calibration").as_bytes()));

        let r = decide(&known, &table, Profile::Release);
        assert_eq!(r.decisions[b"12345678-bbbb".as_slice()], Decision::Reject(Defect::ShortIdDuplicate));
        assert_eq!(
            r.decisions[b"aaaaaaaa-bbbbbbbb-cccccccc-dddddddd-e".as_slice()],
            Decision::Reject(Defect::ShortIdUnrepaired)
        );
    }
}
