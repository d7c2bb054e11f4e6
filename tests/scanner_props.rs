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

/// An independent, byte-at-a-time reading of the same rules, to hold the scanner's fast paths to:
/// records end at a line feed outside quotes (one CR before it is not part of the record); a
/// quote opens a quoted field only at the field's start; `""` inside quotes is a literal quote;
/// the input ending inside quotes ends the record, flagged.
fn oracle(input: &[u8], key: Option<usize>) -> Vec<(Vec<u8>, u32, Vec<u8>, bool)> {
    let n = input.len();
    let mut out = Vec::new();
    let mut i = 0;
    while i < n {
        let start = i;
        let mut fields: Vec<(usize, usize, bool)> = Vec::new();
        let (mut field_start, mut quoted, mut in_quotes) = (i, false, false);
        let end = loop {
            if i >= n {
                break if in_quotes || !input[start..].ends_with(b"\r") { n } else { n - 1 };
            }
            let b = input[i];
            if in_quotes {
                if b == b'"' {
                    if i + 1 < n && input[i + 1] == b'"' {
                        i += 2;
                        continue;
                    }
                    in_quotes = false;
                }
                i += 1;
                continue;
            }
            if b == b',' {
                fields.push((field_start, i, quoted));
                field_start = i + 1;
                quoted = false;
            } else if b == b'\n' {
                let end = if i > start && input[i - 1] == b'\r' { i - 1 } else { i };
                i += 1;
                break end;
            } else if b == b'"' && i == field_start {
                quoted = true;
                in_quotes = true;
            }
            i += 1;
        };
        let unterminated = in_quotes;
        fields.push((field_start.min(end), end, quoted && !unterminated));
        let key_bytes = match key.and_then(|k| fields.get(k)) {
            Some(&(s, e, q)) if q && e >= s + 2 && input[s] == b'"' && input[e - 1] == b'"' => {
                input[s + 1..e - 1].to_vec()
            }
            Some(&(s, e, _)) => input[s..e].to_vec(),
            None => Vec::new(),
        };
        out.push((input[start..end].to_vec(), fields.len() as u32, key_bytes, unterminated));
    }
    out
}

fn csv_ish_bytes() -> impl Strategy<Value = Vec<u8>> {
    // Mostly plain text with the characters that matter, long enough to cross 64-byte blocks.
    let byte = prop_oneof![8 => b'a'..=b'e', 3 => Just(b','), 2 => Just(b'\n'), 1 => Just(b'\r'), 1 => Just(b'"'), 1 => any::<u8>()];
    proptest::collection::vec(byte, 0..700)
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
    fn scanner_agrees_with_a_byte_at_a_time_reading(bytes in csv_ish_bytes(), chunk in 1usize..200, key in proptest::option::of(0usize..6)) {
        let want = oracle(&bytes, key);
        prop_assert_eq!(&scan_chunked(&bytes, bytes.len().max(1), key), &want);
        prop_assert_eq!(&scan_chunked(&bytes, chunk, key), &want);
    }

    #[test]
    fn long_quote_free_lines_cross_blocks(fields in proptest::collection::vec("[a-z0-9 ]{0,90}", 1..12), lines in 1usize..6, key in 0usize..12, crlf in any::<bool>()) {
        let line = fields.join(",");
        let eol = if crlf { "\r\n" } else { "\n" };
        let text: String = (0..lines).map(|_| format!("{line}{eol}")).collect();
        let got = scan_chunked(text.as_bytes(), 37, Some(key));
        prop_assert_eq!(got.len(), lines);
        for (raw, count, key_bytes, unterminated) in got {
            prop_assert_eq!(raw, line.as_bytes().to_vec());
            prop_assert_eq!(count as usize, fields.len());
            prop_assert_eq!(key_bytes, fields.get(key).map(|f| f.as_bytes().to_vec()).unwrap_or_default());
            prop_assert!(!unterminated);
        }
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
