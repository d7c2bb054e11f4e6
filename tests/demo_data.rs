//! The real MIMIC-IV demo 2.2 (ODbL), built for a cohort of its subjects and checked against the
//! source row by row.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;

use common::*;

const COHORT: usize = 30;

/// Splits a demo table (no embedded newlines) into its header and data lines.
fn lines(bytes: &[u8]) -> (Vec<u8>, Vec<Vec<u8>>) {
    let mut it = bytes.split(|&b| b == b'\n').map(|l| l.strip_suffix(b"\r").unwrap_or(l).to_vec());
    let header = it.next().unwrap();
    (header, it.filter(|l| !l.is_empty()).collect())
}

fn subject_of(line: &[u8], col: usize) -> String {
    let mut r = csv::ReaderBuilder::new().has_headers(false).from_reader(line);
    let rec = r.records().next().unwrap().unwrap();
    rec[col].to_string()
}

#[test]
fn every_demo_table_is_split_row_for_row() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    let output = tmp.path().join("out");
    let planted = synth(&input, &["--mimiciv", demo_data().to_str().unwrap(), "--patients", &COHORT.to_string()]);
    let summary = build(&input, &output, &[]);
    assert_balanced(&summary);
    let cohort: BTreeSet<String> = planted["cohort"].as_array().unwrap().iter().map(|v| v.to_string()).collect();
    assert_eq!(cohort.len(), COHORT);
    assert_eq!(summary["patients"].as_u64().unwrap() as usize, COHORT);

    let mut checked = 0;
    for module in ["hosp", "icu"] {
        let folder = if module == "hosp" { "Hosp" } else { "ICU" };
        for entry in fs::read_dir(demo_data().join(module)).unwrap().flatten() {
            let name = entry.file_name().to_string_lossy().replace(".csv.gz", "");
            let (header, rows) = lines(&read_table(&entry.path()));
            let counts = &summary["tables"][format!("{module}/{name}")];
            assert_eq!(counts["read"].as_u64().unwrap() as usize, rows.len(), "{module}/{name} rows read");
            let header_names: Vec<String> = String::from_utf8_lossy(&header).split(',').map(str::to_string).collect();
            let sid_col = header_names.iter().position(|h| h == "subject_id");
            match sid_col {
                Some(col) if name != "patients" => {
                    // Expected file per cohort subject: ",<header>" then "<row>,<line>" in order.
                    let mut expected: BTreeMap<String, Vec<u8>> = BTreeMap::new();
                    let mut outside = 0;
                    for (i, line) in rows.iter().enumerate() {
                        let s = subject_of(line, col);
                        if !cohort.contains(&s) {
                            outside += 1;
                            continue;
                        }
                        let f = expected.entry(s).or_insert_with(|| [b",", &header[..], b"\n"].concat());
                        f.extend_from_slice(format!("{i},").as_bytes());
                        f.extend_from_slice(line);
                        f.push(b'\n');
                    }
                    assert_eq!(counts["outside_cohort"].as_u64().unwrap(), outside, "{module}/{name}");
                    for s in &cohort {
                        let path = output.join(format!("patient_{s}/{folder}/{name}.csv"));
                        match expected.get(s) {
                            Some(bytes) => {
                                let got = fs::read(&path).unwrap_or_else(|_| panic!("missing {}", path.display()));
                                assert!(got == *bytes, "{} differs from the source rows", path.display());
                                checked += 1;
                            }
                            None => assert!(!path.exists(), "{} should not exist: no rows", path.display()),
                        }
                    }
                }
                _ => {
                    let mut want = [b",", &header[..], b"\n"].concat();
                    for (i, line) in rows.iter().enumerate() {
                        want.extend_from_slice(format!("{i},{}\n", String::from_utf8_lossy(line)).as_bytes());
                    }
                    let path = output.join(format!("spreadsheets/{folder}/{name}.csv"));
                    assert!(fs::read(&path).unwrap() == want, "{} differs", path.display());
                    checked += 1;
                }
            }
        }
    }
    assert!(checked > 200, "only {checked} files checked");
    // patients goes to spreadsheets only.
    assert!(output.join("spreadsheets/Hosp/patients.csv").exists());
    assert!(!output.join(format!("patient_{}/Hosp/patients.csv", cohort.iter().next().unwrap())).exists());
    // Nothing but patient folders, spreadsheets, state, the summary and the output's own
    // SHA256SUMS.txt at the top.
    for e in fs::read_dir(&output).unwrap().flatten() {
        let n = e.file_name().to_string_lossy().to_string();
        let known = ["spreadsheets", ".mimic-eye", "summary.json", "report.html", "SHA256SUMS.txt"];
        assert!(n.starts_with("patient_") || known.contains(&n.as_str()), "{n}");
    }
}

#[test]
fn plain_csv_and_gzip_inputs_give_identical_output() {
    let tmp = tempfile::tempdir().unwrap();
    let gz_in = tmp.path().join("gz");
    synth(&gz_in, &["--mimiciv", demo_data().to_str().unwrap(), "--patients", "12"]);
    // The same tree with every .csv.gz decompressed.
    let plain_in = tmp.path().join("plain");
    copy_decompressed(&gz_in, &plain_in);
    let a = tmp.path().join("out-gz");
    let b = tmp.path().join("out-plain");
    let sa = build(&gz_in, &a, &["--profile", "paper"]);
    let sb = build(&plain_in, &b, &["--profile", "paper"]);
    assert_eq!(sa["tables"], sb["tables"]);
    let (ta, tb) = (tree(&a), tree(&b));
    assert_eq!(ta.keys().collect::<Vec<_>>(), tb.keys().collect::<Vec<_>>());
    for (k, v) in &ta {
        assert!(v == &tb[k], "{} differs between .csv.gz and .csv input", k.display());
    }
    assert!(ta.len() > 100);
}

fn copy_decompressed(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap().flatten() {
        let p = e.path();
        let name = e.file_name().to_string_lossy().to_string();
        if e.file_type().unwrap().is_dir() {
            copy_decompressed(&p, &to.join(&name));
        } else if let Some(stem) = name.strip_suffix(".gz") {
            fs::write(to.join(stem), read_table(&p)).unwrap();
        } else {
            fs::copy(&p, to.join(&name)).unwrap();
        }
    }
}
