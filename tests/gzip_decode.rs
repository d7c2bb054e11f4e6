//! The gzip decoder of input tables, whichever backend this build has (`mimic_eye::gzip::BACKEND`:
//! zlib-rs by default, ISA-L with `--features isal`). CI runs this file under both.

use std::io::{self, BufReader, Read, Write};

use flate2::write::GzEncoder;
use flate2::Compression;
use mimic_eye::gzip;
use proptest::prelude::*;

fn gzip_member(data: &[u8], level: u32) -> Vec<u8> {
    let mut enc = GzEncoder::new(Vec::new(), Compression::new(level));
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

/// Decodes `file` through a `BufReader` of `buffer` bytes, asking for `read` bytes at a time.
fn decode(file: &[u8], buffer: usize, read: usize) -> io::Result<Vec<u8>> {
    let mut d = gzip::decoder(BufReader::with_capacity(buffer, io::Cursor::new(file.to_vec())))?;
    let mut out = Vec::new();
    let mut buf = vec![0u8; read];
    loop {
        let n = d.read(&mut buf)?;
        if n == 0 {
            return Ok(out);
        }
        out.extend_from_slice(&buf[..n]);
    }
}

/// CSV-like text with long repeats (back-references up to the 32 KiB window) and random bytes.
fn table_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        prop_oneof![
            3 => "[0-9]{1,9},[0-9]{8},2180-05-0[1-9] [0-2][0-9]:[0-5][0-9]:00,\"a, b\",mg/dL\n".prop_map(String::into_bytes),
            1 => prop::collection::vec(any::<u8>(), 0..300),
            1 => (0usize..2000, 1usize..40).prop_map(|(n, w)| (0..n).map(|i| b'a' + (i % w) as u8).collect()),
        ],
        0..400,
    )
    .prop_map(|parts| parts.concat())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Every member of a multi-member file is decoded, in order, whatever the buffer and read
    /// sizes (small ones cut the stream inside headers, blocks and trailers).
    #[test]
    fn multi_member_files_decode_to_their_bytes(
        members in prop::collection::vec((table_bytes(), 0u32..10), 1..4),
        buffer in prop_oneof![1usize..64, 64usize..70_000],
        read in prop_oneof![1usize..64, 64usize..300_000],
    ) {
        let file: Vec<u8> = members.iter().flat_map(|(data, level)| gzip_member(data, *level)).collect();
        let expected: Vec<u8> = members.iter().flat_map(|(data, _)| data.clone()).collect();
        let got = decode(&file, buffer, read).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert!(got == expected, "{} bytes decoded, {} expected", got.len(), expected.len());
    }

    /// A two-member file cut anywhere inside either member fails; it never passes for a shorter
    /// table. (Cut exactly between the members it is a valid one-member file.)
    #[test]
    fn a_file_cut_inside_a_member_fails(
        first in table_bytes(),
        second in table_bytes(),
        cut in 0.0f64..1.0,
        buffer in 1usize..5000,
    ) {
        let one = gzip_member(&first, 6);
        let file = [one.clone(), gzip_member(&second, 1)].concat();
        let at = ((file.len() as f64) * cut) as usize;
        prop_assume!(at != one.len());
        prop_assert!(decode(&file[..at], buffer, 4096).is_err(), "{} of {} bytes decoded without error", at, file.len());
    }

    /// Corrupt bytes anywhere (header, deflate data, trailer) either fail the file or, where
    /// they do not change what decodes (a header's MTIME, say), give the original bytes: the
    /// CRC-32 and length trailer let nothing else through, and nothing hangs or crashes.
    #[test]
    fn corruption_never_passes_as_other_data(
        data in table_bytes(),
        flips in prop::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 1..4),
    ) {
        let mut file = gzip_member(&data, 6);
        for (at, mask) in &flips {
            let i = at.index(file.len());
            file[i] ^= mask;
        }
        if let Ok(got) = decode(&file, 4096, 65536) {
            prop_assert!(got == data, "corrupt file decoded to {} other bytes", got.len());
        }
    }
}

#[test]
fn the_backend_is_the_one_built() {
    assert_eq!(gzip::BACKEND, if cfg!(feature = "isal") { "isal" } else { "zlib-rs" });
}

#[test]
fn an_empty_file_is_an_unexpected_end() {
    let e = decode(b"", 4096, 4096).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof, "{e}");
}

#[test]
fn a_wrong_checksum_or_length_fails() {
    let data = b"subject_id,value\n10000032,1\n".repeat(1000);
    let good = gzip_member(&data, 6);
    assert_eq!(decode(&good, 4096, 4096).unwrap(), data);
    let n = good.len();
    for (what, at) in [("crc32", n - 8), ("length", n - 4)] {
        let mut bad = good.clone();
        bad[at] ^= 0x01;
        let e = decode(&bad, 4096, 4096).unwrap_err();
        // flate2 says InvalidInput, ISA-L's face InvalidData; either way the table fails.
        assert!(matches!(e.kind(), io::ErrorKind::InvalidData | io::ErrorKind::InvalidInput), "{what}: {e}");
    }
}

#[test]
fn garbage_after_the_last_member_or_instead_of_gzip_fails() {
    let data = b"subject_id,value\n10000032,1\n".repeat(100);
    let good = gzip_member(&data, 6);
    let trailing = [&good[..], b"this is not gzip at all"].concat();
    assert!(decode(&trailing, 4096, 4096).is_err());
    assert!(decode(&data, 4096, 4096).is_err(), "plain text read as gzip");
    let mut flipped = good.clone();
    flipped[good.len() / 2] ^= 0xff; // inside the deflate data
    assert!(decode(&flipped, 4096, 4096).is_err());
}

#[test]
fn a_file_made_by_the_gzip_tool_decodes() {
    // The real PhysioNet files are made by gzip(1); use it when this machine has it.
    let Ok(out) = std::process::Command::new("gzip")
        .arg("-c")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/mimic-iv-demo/hosp/labevents.csv.gz"))
        .output()
    else {
        return;
    };
    // labevents.csv.gz compressed once more: two layers, each a real gzip(1) file.
    let once = decode(&out.stdout, 1 << 16, 1 << 18).unwrap();
    let twice = decode(&once, 1 << 16, 1 << 18).unwrap();
    assert!(twice.starts_with(b"labevent_id,subject_id,hadm_id,specimen_id,itemid"));
    assert_eq!(twice.iter().filter(|&&b| b == b'\n').count(), 107_728);
}
