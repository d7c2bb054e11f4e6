//! The record scanner alone, on CSV made here with known counts: the scan must find every
//! record, field and key and every quoted line break, then its speed is printed. As csv-core's
//! benchmarks do, it asserts what it counted, so a fast wrong scanner fails.
//! `cargo bench --bench scanner` (about 10 s).

use std::time::Instant;

use mimic_eye::csvscan::Scanner;

/// `rows` labevents-like records, one in `quoted_every` with a quoted field holding a comma,
/// a doubled quote and a line break; returns the bytes and the quoted-line-break count.
fn table(rows: usize, quoted_every: usize) -> (Vec<u8>, u64) {
    let mut out = Vec::with_capacity(rows * 110);
    let mut newlines = 0;
    for i in 0..rows {
        let comment = if i % quoted_every == 0 {
            newlines += 1;
            "\"hemolysed, \"\"see\"\"\nnote\""
        } else {
            "___"
        };
        out.extend_from_slice(
            format!(
                "{i},1{:07},2{:07},51221,2180-05-06 22:25:00,2180-05-06 23:04:00,{:.1},mg/dL,{comment},ROUTINE\n",
                i % 9_999_999,
                i % 7_777_777,
                i as f64 / 7.0
            )
            .as_bytes(),
        );
    }
    (out, newlines)
}

fn main() {
    let (rows, quoted_every) = (2_000_000, 50);
    let (data, quoted_newlines) = table(rows, quoted_every);
    let scanner = Scanner::new(Some(1));
    let mut best = f64::MAX;
    for run in 0..5 {
        let started = Instant::now();
        let (mut records, mut fields, mut newlines, mut key_bytes) = (0u64, 0u64, 0u64, 0u64);
        // Chunks of 256 KiB, as the reader hands them over; a cut record waits for the next.
        let mut pos = 0;
        while pos < data.len() {
            let end = (pos + (256 << 10)).min(data.len());
            let eof = end == data.len();
            let chunk = &data[pos..end];
            let used = scanner.scan(chunk, eof, |r| {
                records += 1;
                fields += u64::from(r.fields);
                newlines += u64::from(r.newlines);
                key_bytes += r.key.slice(chunk).len() as u64;
                assert!(!r.unterminated);
            });
            pos += if used == 0 && !eof { panic!("a record longer than a chunk") } else { used.max(1) };
            if eof {
                break;
            }
        }
        let seconds = started.elapsed().as_secs_f64();
        assert_eq!(records, rows as u64, "records");
        assert_eq!(fields, rows as u64 * 10, "fields");
        assert_eq!(newlines, quoted_newlines, "quoted line breaks");
        assert_eq!(key_bytes, rows as u64 * 8, "key bytes (subject_id, 8 digits)");
        best = best.min(seconds);
        println!(
            "run {run}: {} records, {:.1} MB in {seconds:.3} s = {:.0} MB/s",
            records,
            data.len() as f64 / 1e6,
            data.len() as f64 / seconds / 1e6
        );
    }
    println!(
        "best: {:.0} MB/s ({} records, {} fields each, 1 in {quoted_every} quoted)",
        data.len() as f64 / best / 1e6,
        rows,
        10
    );
}
