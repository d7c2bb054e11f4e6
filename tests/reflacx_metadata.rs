//! REFLACX outputs as their users read them: each phase's own row numbers in the index column,
//! and the five label columns the paper profile merges kept beside their merged targets (the
//! authors' loaders select them).

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::*;

const SOURCES: [&str; 5] = ["Mass", "Nodule", "Emphysema", "Pleural thickening", "Pleural effusion"];
/// Each merged target and the columns it takes (SPEC §4).
const MERGES: [(&str, &[&str]); 3] = [
    ("Lung nodule or mass", &["Lung nodule or mass", "Mass", "Nodule"]),
    ("High lung volume / emphysema", &["High lung volume / emphysema", "Emphysema"]),
    ("Pleural abnormality", &["Pleural abnormality", "Pleural thickening", "Pleural effusion"]),
];

/// reading id → (phase, 0-based row in its phase file, the row by column name).
type Sources = BTreeMap<String, (usize, usize, BTreeMap<String, String>)>;

fn sources(input: &Path) -> Sources {
    let mut out = BTreeMap::new();
    for phase in 1..=3 {
        let (h, rows) = csv_table(&input.join(format!("reflacx/main_data/metadata_phase_{phase}.csv")));
        for (i, r) in rows.into_iter().enumerate() {
            let named: BTreeMap<String, String> = h.iter().cloned().zip(r).collect();
            out.insert(named["id"].clone(), (phase, i, named));
        }
    }
    out
}

fn max_certainty(values: &[&str]) -> String {
    let best = values.iter().filter(|v| !v.is_empty()).max_by(|a, b| {
        let (a, b): (f64, f64) = (a.parse().unwrap(), b.parse().unwrap());
        a.total_cmp(&b)
    });
    best.map_or(String::new(), |v| v.to_string())
}

/// Every row's index is its row number in its own phase file; rows in phase order, then
/// source order; the first rows of phases 2 and 3 are numbered 0. Returns the checked table.
fn assert_phase_numbering(metadata: &Path, src: &Sources) -> (Vec<String>, Vec<Vec<String>>) {
    let (h, rows) = csv_table(metadata);
    assert_eq!(h[0], "", "index column first");
    let id = col(&h, "id");
    let mut order = Vec::new();
    for r in &rows {
        let (phase, pos, _) = &src[&r[id]];
        assert_eq!(r[0], pos.to_string(), "index of {} (phase {phase}) in {}", r[id], metadata.display());
        order.push((*phase, *pos));
    }
    let mut sorted = order.clone();
    sorted.sort();
    assert_eq!(order, sorted, "rows in phase order, then source order: {}", metadata.display());
    (h, rows)
}

fn check_profile(profile: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    let out = tmp.path().join("out");
    synth(&input, &["--patients", "30", "--others", "10", "--seed", "5"]);
    build(&input, &out, &["--profile", profile]);
    let src = sources(&input);

    let (h, rows) = assert_phase_numbering(&out.join("spreadsheets/REFLACX/metadata.csv"), &src);
    assert_eq!(rows.len(), src.len(), "every reading of every phase");
    let id = col(&h, "id");
    for phase in [2, 3] {
        let first = src.iter().find(|(_, (p, pos, _))| *p == phase && *pos == 0).expect("phase has rows");
        let row = rows.iter().find(|r| &r[id] == first.0).expect("first row of phase in the spreadsheet");
        assert_eq!(row[0], "0", "{profile}: first row of phase {phase} in the spreadsheet");
        // And in its patient's file, which keeps the same numbering and every column.
        let subject = &first.1 .2["subject_id"];
        let (ph, prows) = assert_phase_numbering(&out.join(format!("patient_{subject}/REFLACX/metadata.csv")), &src);
        assert_eq!(ph, h, "a patient's subset keeps the whole table's columns");
        let prow = prows.iter().find(|r| &r[col(&ph, "id")] == first.0).expect("reading in its patient's file");
        assert_eq!(prow[0], "0", "{profile}: first row of phase {phase} in patient_{subject}");
    }
}

#[test]
fn each_phase_is_numbered_from_zero_in_the_paper_profile() {
    check_profile("paper");
}

#[test]
fn each_phase_is_numbered_from_zero_in_the_release_profile() {
    check_profile("release");
}

#[test]
fn paper_keeps_the_merged_away_columns_with_their_source_values() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    let out = tmp.path().join("out");
    synth(&input, &["--patients", "30", "--others", "10", "--seed", "5"]);
    build(&input, &out, &[]);
    let src = sources(&input);

    // Metadata: the sources as the phase files have them (empty where a phase lacks the
    // column), the targets the max of the non-empty ones.
    let (h, rows) = csv_table(&out.join("spreadsheets/REFLACX/metadata.csv"));
    let id = col(&h, "id");
    let mut v1_checked = 0;
    for r in &rows {
        let (phase, _, source) = &src[&r[id]];
        let value = |name: &str| source.get(name).cloned().unwrap_or_default();
        for name in SOURCES {
            assert_eq!(r[col(&h, name)], value(name), "{name} of {}", r[id]);
        }
        for (target, from) in MERGES {
            let values: Vec<String> = from.iter().map(|c| value(c)).collect();
            let refs: Vec<&str> = values.iter().map(String::as_str).collect();
            assert_eq!(r[col(&h, target)], max_certainty(&refs), "{target} of {}", r[id]);
        }
        if *phase == 1 && SOURCES.iter().any(|s| !value(s).is_empty()) {
            v1_checked += 1;
        }
    }
    assert!(v1_checked > 0, "no phase-1 reading with label values was checked");

    // A v1 ellipses file: the five sources kept verbatim, targets appended as their OR.
    let reading = src
        .iter()
        .filter(|(_, (p, _, _))| *p == 1)
        .find_map(|(rid, (_, _, row))| {
            let p = out
                .join(format!("patient_{}/REFLACX/main_data/{rid}/anomaly_location_ellipses.csv", row["subject_id"]));
            p.is_file().then(|| (rid.clone(), p))
        })
        .expect("a phase-1 reading with an ellipses file");
    let (rid, merged) = reading;
    let (sh, srows) = csv_table(&input.join(format!("reflacx/main_data/{rid}/anomaly_location_ellipses.csv")));
    let (mh, mrows) = csv_table(&merged);
    assert!(!srows.is_empty(), "the planted v1 ellipses file has rows");
    assert_eq!(&mh[..sh.len()], &sh[..], "source columns kept, in place");
    assert_eq!(&mh[sh.len()..], ["Lung nodule or mass", "High lung volume / emphysema", "Pleural abnormality"]);
    for name in SOURCES {
        assert!(sh.iter().any(|c| c == name), "planted v1 file has {name}");
    }
    let truthy = |v: &str| v.eq_ignore_ascii_case("true") || v == "1" || v == "1.0";
    for (s, m) in srows.iter().zip(&mrows) {
        assert_eq!(&m[..s.len()], &s[..], "source values kept verbatim");
        for (target, from) in MERGES {
            let any = from.iter().filter_map(|c| sh.iter().position(|h| h == c)).any(|i| truthy(&s[i]));
            assert_eq!(m[col(&mh, target)], if any { "True" } else { "False" }, "{target} in {rid}");
        }
    }
}
