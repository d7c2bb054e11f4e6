//! Derived tables, made in memory from the linker's small tables and written through the same
//! writer: cxr_meta (with the stay links), the stacked REFLACX metadata, the master sheet.

mod output;
pub(super) mod side_tables;

use std::path::{Path, PathBuf};

use crate::counts::TableCounts;
use crate::ids::SubjectId;
use crate::pipeline::batch::{self, Batch, Origin};
use crate::pipeline::context::BuildContext;
use crate::pipeline::error::{JobError, ReadError, ReadErrorKind};
use crate::pipeline::job_keys;
use crate::pipeline::linker::{study_datetime_column, CxrRow};
use crate::pipeline::reader::Header;
use crate::pipeline::small_table::SmallTable;
use crate::pipeline::writer::{Route, Writer};

use crate::shutdown::CancelToken;
use crate::source::Sha256Check;
use output::{unchanged, DerivedTable, DerivedWriter};

/// Rows of cxr_meta handed to its writers at a time.
const CXR_META_BATCH_ROWS: usize = 4096;

/// `spreadsheets/cxr_meta.csv`, its per-patient rows, and the rows with a stay only: the CXR
/// metadata re-read, each row of the subset written with the columns the build adds. The linker
/// kept ids, not rows: a `--cohort cxr` build holds a batch of rows here, not 377,000.
pub(super) fn write_cxr_meta(ctx: &BuildContext) -> Result<Vec<(String, TableCounts)>, JobError> {
    let jobs = [job_keys::CXR_META, job_keys::CXR_META_STAY_ONLY];
    if let [Some(meta), Some(stay_only)] = jobs.map(|job| unchanged(ctx, job)) {
        return Ok(vec![(jobs[0].into(), meta), (jobs[1].into(), stay_only)]);
    }
    let links = &ctx.links;
    let source = &links.cxr_source;
    let mut header = links.cxr_header.raw.clone();
    header.extend_from_slice(b",in_eye_gaze,in_reflacx,StudyDateTime,stay_id");
    let table = |job, route, patient_file: Option<&str>, whole_file: &str, rejects_not_kept| DerivedTable {
        job,
        source,
        route,
        patient_file: patient_file.map(PathBuf::from),
        whole_file: Some(PathBuf::from(whole_file)),
        rejects_not_kept,
    };
    let meta_table = table(
        job_keys::CXR_META,
        Route::BySubject,
        Some("CXR-JPG/cxr_meta.csv"),
        "spreadsheets/cxr_meta.csv",
        links.cxr_rejects.not_kept,
    );
    let stay_table =
        table(job_keys::CXR_META_STAY_ONLY, Route::Whole, None, "spreadsheets/cxr_meta_with_stay_id_only.csv", 0);
    let mut meta = DerivedWriter::open(ctx, meta_table, header.clone())?;
    let mut stay_only = DerivedWriter::open(ctx, stay_table, header)?;
    rewrite_subset(ctx, &mut meta.writer, &mut stay_only.writer)?;
    let mut rejects = Batch::default();
    batch::append_rejects(&mut rejects, &links.cxr_rejects);
    meta.writer.write_batch(&rejects)?;
    Ok(vec![(job_keys::CXR_META.into(), meta.publish()?), (job_keys::CXR_META_STAY_ONLY.into(), stay_only.publish()?)])
}

/// Re-reads the CXR metadata and writes the linker's rows of it, in batches, to `all` and
/// (those with a stay) to `linked`.
fn rewrite_subset(ctx: &BuildContext, all: &mut Writer, linked: &mut Writer) -> Result<(), JobError> {
    use std::io::Write as _;
    let links = &ctx.links;
    if links.cxr_rows.is_empty() {
        return Ok(());
    }
    let (source, header) = (&links.cxr_source, &links.cxr_header);
    let (date_col, time_col) = (header.require(source, "StudyDate")?, header.require(source, "StudyTime")?);
    let tf = |b: bool| if b { "True" } else { "False" };
    let (mut batch_all, mut batch_linked) = (Batch::default(), Batch::default());
    let (mut rec, mut key) = (Vec::new(), Vec::new());
    each_subset_row(source, header, &links.cxr_rows, &ctx.cancel, |row, origin, raw, fields| {
        let field = |i: usize| fields.get(i).map_or(&[][..], Vec::as_slice);
        let datetime = study_datetime_column(field(date_col), field(time_col), ctx.config.profile);
        // Written into reused buffers: no allocation per row but the date's.
        rec.clear();
        rec.extend_from_slice(raw);
        let _ = write!(rec, ",{},{},{datetime},", tf(row.in_eye_gaze), tf(row.in_reflacx));
        if let Some(stay) = row.stay {
            let _ = write!(rec, "{stay}");
        }
        key.clear();
        let _ = write!(key, "{}", row.subject);
        batch::push_record(&mut batch_all, origin, &rec, &key);
        if row.stay.is_some() {
            batch::push_record(&mut batch_linked, origin, &rec, &key);
        }
        if batch_all.records.len() >= CXR_META_BATCH_ROWS {
            flush(all, &mut batch_all)?;
            flush(linked, &mut batch_linked)?;
        }
        Ok(())
    })?;
    flush(all, &mut batch_all)?;
    flush(linked, &mut batch_linked)
}

/// Streams the metadata rows the linker kept (`rows`, in file order) to `each`, re-read from
/// `source`. A file that no longer holds them (another header, a kept row gone or of another
/// subject) fails with [`ReadErrorKind::ChangedDuringBuild`]: its rows are not written.
fn each_subset_row(
    source: &Path,
    header: &Header,
    rows: &[CxrRow],
    cancel: &CancelToken,
    mut each: impl FnMut(&CxrRow, Origin, &[u8], &[Vec<u8>]) -> Result<(), JobError>,
) -> Result<(), JobError> {
    let changed = || JobError::Read(ReadError { path: source.to_path_buf(), kind: ReadErrorKind::ChangedDuringBuild });
    let subject_col = header.require(source, "subject_id")?;
    let mut rows = rows.iter().peekable();
    let (reread_header, _) =
        SmallTable::visit::<JobError>(source, Sha256Check::Off, cancel, |h, origin, raw, fields| {
            let Some(row) = rows.next_if(|r| r.row == origin.row) else { return Ok(()) };
            let subject = fields.get(subject_col).and_then(|f| SubjectId::parse(f).ok());
            if h.raw != header.raw || subject != Some(row.subject) {
                return Err(changed());
            }
            each(row, origin, raw, fields)
        })?;
    if rows.next().is_some() || reread_header.raw != header.raw {
        return Err(changed());
    }
    Ok(())
}

fn flush(writer: &mut Writer, batch: &mut Batch) -> Result<(), JobError> {
    writer.write_batch(batch)?;
    batch.data.clear();
    batch.records.clear();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str = "dicom_id,subject_id,study_id,StudyDate,StudyTime\n";

    fn kept(row: u64, subject: u64) -> CxrRow {
        let subject = SubjectId::parse(subject.to_string().as_bytes()).unwrap();
        CxrRow {
            row,
            subject,
            study: None,
            in_eye_gaze: false,
            in_reflacx: false,
            stay: None,
            by_window: false,
            view: Default::default(),
        }
    }

    /// The rows `rows` of `text` re-read through [`each_subset_row`], with the header of `first`.
    fn reread(first: &str, text: &str, rows: &[CxrRow]) -> Result<Vec<String>, JobError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metadata.csv");
        std::fs::write(&path, first).unwrap();
        let never = CancelToken::default();
        let (header, _) = SmallTable::visit::<JobError>(&path, Sha256Check::Off, &never, |_, _, _, _| Ok(())).unwrap();
        std::fs::write(&path, text).unwrap();
        let mut seen = Vec::new();
        each_subset_row(&path, &header, rows, &never, |_, _, raw, _| {
            seen.push(String::from_utf8(raw.to_vec()).unwrap());
            Ok(())
        })?;
        Ok(seen)
    }

    fn is_changed(r: Result<Vec<String>, JobError>) -> bool {
        matches!(r, Err(JobError::Read(ReadError { kind: ReadErrorKind::ChangedDuringBuild, .. })))
    }

    #[test]
    fn kept_rows_are_re_read_verbatim_and_a_changed_file_fails_the_job() {
        let text = format!("{HEADER}d0,10000001,50000001,21000101,1200\nd1,10000002,50000002,21000101,1300\nd2,10000003,50000003,21000101,1400\n");
        let rows = [kept(0, 10000001), kept(2, 10000003)];
        let got = reread(&text, &text, &rows).unwrap();
        assert_eq!(got, ["d0,10000001,50000001,21000101,1200", "d2,10000003,50000003,21000101,1400"]);
        // Row 2 now of another subject; row 2 gone; another header: nothing is written.
        assert!(is_changed(reread(&text, &text.replace("d2,10000003", "d2,10000009"), &rows)));
        assert!(is_changed(reread(&text, &format!("{HEADER}d0,10000001,50000001,21000101,1200\n"), &rows)));
        assert!(is_changed(reread(&text, &text.replace("StudyTime", "Time"), &rows)));
        // Rows the linker did not keep may change.
        assert!(reread(&text, &text.replace("d1,10000002", "d1,10000007"), &rows).is_ok());
    }
}
