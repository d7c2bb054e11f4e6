//! The writer alone: the LRU of open files, the flush sizes, kept patients and rejects.

use super::*;
use crate::pipeline::batch::{batch_of, Origin};

fn spec(staging: &Path, cohort: &[u64], max_open_files: usize) -> WriterSpec {
    let subjects = cohort.iter().map(|s| SubjectId::parse(s.to_string().as_bytes()).unwrap());
    WriterSpec {
        table: "hosp/labevents".into(),
        source: PathBuf::from("labevents.csv"),
        header: b"subject_id,value".to_vec(),
        index_column: true,
        route: Route::BySubject,
        patient_file: Some(PathBuf::from("Hosp/labevents.csv")),
        whole_file: None,
        cohort: Arc::new(Cohort::from_subjects(subjects)),
        staging: staging.to_path_buf(),
        max_open_files,
        only_patients: None,
    }
}

/// `rows` of (subject, value) as one batch, rows numbered from `first`.
fn batch(first: u64, rows: &[(&str, String)]) -> Batch {
    let records: Vec<(Origin, Vec<u8>, Vec<u8>)> = rows
        .iter()
        .enumerate()
        .map(|(i, (s, v))| {
            let row = first + i as u64;
            (Origin { row, line: row + 2 }, format!("{s},{v}").into_bytes(), s.as_bytes().to_vec())
        })
        .collect();
    batch_of(records.iter().map(|(o, r, k)| (*o, r.clone(), k.as_slice())))
}

#[test]
fn interleaved_patients_through_an_lru_of_two_files_keep_every_row_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let subjects = [11, 12, 13, 14, 15];
    let mut w = Writer::new(spec(dir.path(), &subjects, 2)).unwrap();
    let mut expected: BTreeMap<u64, String> = subjects.iter().map(|s| (*s, ",subject_id,value\n".into())).collect();
    let mut row = 0;
    for round in 0..40 {
        // 5 patients, 2 open files: every batch evicts; a patient's rows exceed its flush size.
        let rows: Vec<(&str, String)> =
            ["11", "12", "13", "14", "15", "99"].iter().map(|s| (*s, format!("{round}-{}", "x".repeat(500)))).collect();
        w.write_batch(&batch(row, &rows)).unwrap();
        for (i, (s, v)) in rows.iter().enumerate() {
            if let Some(text) = s.parse::<u64>().ok().and_then(|s| expected.get_mut(&s)) {
                text.push_str(&format!("{},{s},{v}\n", row + i as u64));
            }
        }
        row += rows.len() as u64;
        assert!(w.open.len() <= 2, "{} files open", w.open.len());
        assert!(w.buffered <= BUFFER_BUDGET + PATIENT_FLUSH, "{} bytes buffered", w.buffered);
    }
    let outcome = w.finish().unwrap();
    assert_eq!(outcome.counts.written, 200);
    assert_eq!(outcome.counts.outside_cohort, 40);
    assert_eq!(outcome.files.len(), 5);
    for (s, text) in expected {
        let file = paths::staged_path(dir.path(), Path::new(&format!("patient_{s}/Hosp/labevents.csv")));
        assert_eq!(fs::read_to_string(&file).unwrap(), text, "{}", file.display());
        assert_eq!(outcome.per_patient[&s], 40);
    }
}

#[test]
fn patients_kept_from_the_last_build_are_counted_not_written_and_bad_keys_are_kept_as_rejects() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = spec(dir.path(), &[11, 12], 8);
    s.only_patients = Some(Arc::new([SubjectId::parse(b"12").unwrap()].into_iter().collect()));
    let mut w = Writer::new(s).unwrap();
    w.write_batch(&batch(0, &[("11", "a".into()), ("12", "b".into()), ("x1", "c".into()), ("11", "d".into())]))
        .unwrap();
    let outcome = w.finish().unwrap();
    assert_eq!((outcome.counts.written, outcome.counts.rejected), (3, 1));
    assert_eq!(outcome.per_patient[&11], 2, "a kept patient's rows are still counted");
    let staged = |rel: &str| paths::staged_path(dir.path(), Path::new(rel));
    assert!(!staged("patient_11/Hosp/labevents.csv").exists(), "a kept patient's file was rewritten");
    assert_eq!(fs::read_to_string(staged("patient_12/Hosp/labevents.csv")).unwrap(), ",subject_id,value\n1,12,b\n");
    assert_eq!(outcome.rejects_by_reason[&DefectKind::UnroutableSubject], 1);
    let rejects = fs::read_to_string(paths::staged_path(dir.path(), &paths::rejects_path("hosp/labevents"))).unwrap();
    assert!(rejects.starts_with("source_file,line,row,reason,record\nlabevents.csv,4,2,"), "{rejects}");
    assert!(rejects.trim_end().ends_with(",\"x1,c\""), "{rejects}");
}
