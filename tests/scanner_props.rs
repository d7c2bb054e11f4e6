//! Property tests of the record scanner, the hot loop every row goes through.

use mimic_eye::csvscan::{split_fields, Scanner};
use proptest::prelude::*;

/// Scans `input` the way the reader does: chunk by chunk, keeping the partial tail.
fn scan_chunked(input: &[u8], chunk: usize, key: Option<usize>) -> Vec<(Vec<u8>, u32, Vec<u8>, bool)> {
    let scanner = Scanner::new(key);
    let mut out = Vec::new();
    let mut buf: Vec<u8> = Vec::new();
    let mut pos = 0;
    loop {
        let eof = pos >= input.len();
        if !eof {
            let end = (pos + chunk.max(1)).min(input.len());
            buf.extend_from_slice(&input[pos..end]);
            pos = end;
        }
        let eof = pos >= input.len();
        let used = scanner.scan(&buf, eof, |r| {
            out.push((r.span.slice(&buf).to_vec(), r.fields, r.key.slice(&buf).to_vec(), r.unterminated))
        });
        buf.drain(..used);
        if eof {
            assert!(buf.is_empty(), "bytes left after eof");
            return out;
        }
    }
}

fn field_strategy() -> impl Strategy<Value = String> {
    prop_oneof!["[a-z0-9 ]{0,8}", "[a-z,\"\\r\\n ]{0,8}", any::<String>().prop_map(|s| s.chars().take(6).collect()),]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic_and_are_all_consumed(bytes in proptest::collection::vec(any::<u8>(), 0..400), chunk in 1usize..64, key in proptest::option::of(0usize..4)) {
        let whole = scan_chunked(&bytes, bytes.len().max(1), key);
        let chunked = scan_chunked(&bytes, chunk, key);
        prop_assert_eq!(whole, chunked);
    }

    #[test]
    fn what_the_csv_crate_writes_reads_back_field_for_field(
        rows in proptest::collection::vec(proptest::collection::vec(field_strategy(), 1..5), 1..12),
        crlf in any::<bool>(),
        chunk in 1usize..40,
    ) {
        // Every row gets the same field count, as in a real table.
        let width = rows.iter().map(Vec::len).max().unwrap_or(1);
        let rows: Vec<Vec<String>> = rows.into_iter().map(|mut r| { r.resize(width, String::new()); r }).collect();
        let mut w = csv::WriterBuilder::new()
            .terminator(if crlf { csv::Terminator::CRLF } else { csv::Terminator::Any(b'\n') })
            .from_writer(Vec::new());
        for r in &rows {
            w.write_record(r).unwrap();
        }
        let bytes = w.into_inner().unwrap();
        let scanned = scan_chunked(&bytes, chunk, Some(0));
        // The csv crate writes a lone empty field as `""`, never as a blank line.
        let expected: Vec<&Vec<String>> = rows.iter().collect();
        let got: Vec<_> = scanned.iter().collect();
        prop_assert_eq!(got.len(), expected.len());
        for ((raw, fields, key, unterminated), want) in got.iter().zip(expected) {
            prop_assert!(!unterminated);
            prop_assert_eq!(*fields as usize, want.len());
            let decoded: Vec<String> = split_fields(raw).into_iter().map(|f| String::from_utf8(f).unwrap()).collect();
            prop_assert_eq!(&decoded, want);
            // The key span only strips the outer quotes (no copy on the hot path): a key holding
            // a quote keeps it doubled, and such a value is never a valid id anyway.
            if !want[0].contains('"') {
                prop_assert_eq!(String::from_utf8(key.clone()).unwrap(), want[0].clone());
            }
        }
    }
}
