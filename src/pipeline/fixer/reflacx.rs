//! REFLACX label merge (SPEC §4, profile `paper`): phase 1's label set v1 and phases 2–3's v2
//! are merged to 21 classes, in the stacked metadata and in every `anomaly_location_ellipses.csv`.

use crate::pipeline::batch::Origin;
use crate::pipeline::small_table::{SmallRow, SmallTable};

/// Each merged class and the labels it takes (the first is the class itself).
pub(crate) const MERGES: [(&str, &[&str]); 3] = [
    ("Lung nodule or mass", &["Lung nodule or mass", "Mass", "Nodule"]),
    ("High lung volume / emphysema", &["High lung volume / emphysema", "Emphysema"]),
    ("Pleural abnormality", &["Pleural abnormality", "Pleural thickening", "Pleural effusion"]),
];

/// A decoded table: column names, rows of fields, and where each row came from.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Columns {
    pub names: Vec<String>,
    pub rows: Vec<Vec<Vec<u8>>>,
    /// Each row's number and line in its own source file (a stacked phase restarts at 0).
    pub origins: Vec<Origin>,
}

impl Columns {
    /// A small table's rows as they are.
    pub(crate) fn of(table: &SmallTable) -> Self {
        Self {
            names: table.header.names.clone(),
            rows: table.rows.iter().map(|r| r.fields.iter().map(<[u8]>::to_vec).collect()).collect(),
            origins: table.rows.iter().map(SmallRow::origin).collect(),
        }
    }
}

/// The three phases stacked in phase order, columns the outer union (a missing one is empty).
pub(crate) fn stack(phases: &[SmallTable]) -> Columns {
    let mut names: Vec<String> = Vec::new();
    for p in phases {
        for n in &p.header.names {
            if !names.contains(n) {
                names.push(n.clone());
            }
        }
    }
    let mut rows = Vec::new();
    let mut origins = Vec::new();
    for p in phases {
        let map: Vec<Option<usize>> = names.iter().map(|n| p.header.names.iter().position(|m| m == n)).collect();
        for row in &p.rows {
            rows.push(
                map.iter().map(|i| i.and_then(|i| row.fields.get(i).map(<[u8]>::to_vec)).unwrap_or_default()).collect(),
            );
            origins.push(row.origin());
        }
    }
    Columns { names, rows, origins }
}

/// Merges the classes of [`MERGES`]: each target takes `combine` of its sources present, and a
/// missing target is appended (in MERGES order) when a source is present. The source-only
/// columns stay as they are: the authors' loaders select them and merge by themselves.
pub(crate) fn merge(table: &Columns, combine: fn(&[&[u8]]) -> Vec<u8>) -> Columns {
    let mut out = table.clone();
    for (target, sources) in MERGES {
        let present: Vec<usize> = sources.iter().filter_map(|s| out.names.iter().position(|n| n == s)).collect();
        if present.is_empty() {
            continue;
        }
        let target_col = match out.names.iter().position(|n| n == target) {
            Some(i) => i,
            None => {
                out.names.push(target.to_string());
                for row in &mut out.rows {
                    row.push(Vec::new());
                }
                out.names.len() - 1
            }
        };
        for row in &mut out.rows {
            let values: Vec<&[u8]> = present.iter().map(|&i| row[i].as_slice()).collect();
            row[target_col] = combine(&values);
        }
    }
    out
}

/// Metadata certainties (0–5): the largest non-empty source, written as that source wrote it.
pub(crate) fn max_certainty(values: &[&[u8]]) -> Vec<u8> {
    values
        .iter()
        .filter(|v| !v.is_empty())
        .filter_map(|v| std::str::from_utf8(v).ok()?.trim().parse::<f64>().ok().map(|f| (f, *v)))
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, v)| v.to_vec())
        .unwrap_or_default()
}

/// Ellipse label booleans: OR of the sources.
pub(crate) fn any_true(values: &[&[u8]]) -> Vec<u8> {
    if values.iter().all(|v| v.is_empty()) {
        return Vec::new();
    }
    let t = values.iter().any(|v| v.eq_ignore_ascii_case(b"true") || *v == b"1" || *v == b"1.0");
    if t {
        b"True".to_vec()
    } else {
        b"False".to_vec()
    }
}

/// Re-encodes a merged ellipses file with the source's line terminator.
pub(crate) fn encode(table: &Columns, crlf: bool) -> Vec<u8> {
    let eol: &[u8] = if crlf { b"\r\n" } else { b"\n" };
    let mut out = Vec::new();
    let names: Vec<Vec<u8>> = table.names.iter().map(|n| n.as_bytes().to_vec()).collect();
    for row in std::iter::once(&names).chain(table.rows.iter()) {
        out.extend_from_slice(&crate::csvscan::encode_record(row));
        out.extend_from_slice(eol);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cols(names: &[&str], rows: &[&[&str]]) -> Columns {
        Columns {
            names: names.iter().map(|s| s.to_string()).collect(),
            rows: rows.iter().map(|r| r.iter().map(|v| v.as_bytes().to_vec()).collect()).collect(),
            origins: Vec::new(),
        }
    }

    #[test]
    fn v1_ellipses_gain_targets_and_keep_sources() {
        let v1 = cols(
            &["xmin", "certainty", "Emphysema", "Fracture", "Mass", "Nodule", "Pleural effusion", "Pleural thickening"],
            &[&["1", "4", "False", "True", "False", "True", "False", "False"]],
        );
        let m = merge(&v1, any_true);
        assert_eq!(
            m,
            cols(
                &[
                    "xmin",
                    "certainty",
                    "Emphysema",
                    "Fracture",
                    "Mass",
                    "Nodule",
                    "Pleural effusion",
                    "Pleural thickening",
                    "Lung nodule or mass",
                    "High lung volume / emphysema",
                    "Pleural abnormality"
                ],
                &[&["1", "4", "False", "True", "False", "True", "False", "False", "True", "False", "False"]],
            )
        );
    }

    #[test]
    fn v2_ellipses_are_unchanged() {
        let v2 = cols(
            &["xmin", "Acute fracture", "Lung nodule or mass", "Pleural abnormality"],
            &[&["1", "False", "True", "False"]],
        );
        assert_eq!(merge(&v2, any_true), v2);
    }

    #[test]
    fn metadata_takes_the_max_of_non_empty_sources() {
        let stacked = cols(
            &["id", "Mass", "Nodule", "Lung nodule or mass", "Emphysema", "High lung volume / emphysema"],
            &[&["P1", "2", "4", "", "0", ""], &["P3", "", "", "3", "", ""]],
        );
        let m = merge(&stacked, max_certainty);
        assert_eq!(
            m,
            cols(
                &["id", "Mass", "Nodule", "Lung nodule or mass", "Emphysema", "High lung volume / emphysema"],
                &[&["P1", "2", "4", "4", "0", "0"], &["P3", "", "", "3", "", ""]]
            )
        );
    }
}
