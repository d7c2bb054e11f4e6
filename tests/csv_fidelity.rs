//! Records pass through verbatim: quoting, doubled quotes, embedded newlines, CRLF, BOM, trailing
//! spaces and invalid UTF-8 are kept byte for byte.

mod common;

use std::fs;

use common::*;

#[test]
fn quoted_comma_doubled_quote_newline_bom_crlf_and_bad_utf8_pass_intact() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    let planted = synth(&input, &["--patients", "6", "--rows-per-patient", "3", "--plain"]);
    let s = planted["cohort"][0].as_u64().unwrap();
    let mut source: Vec<u8> = Vec::new();
    source.extend_from_slice(b"\xEF\xBB\xBFlabevent_id,subject_id,comments\r\n");
    source.extend_from_slice(format!("1,{s},\"a, b \"\"c\"\"\r\nd\"\r\n").as_bytes());
    source.extend_from_slice(format!("2,{s},trailing  \r\n").as_bytes());
    source.extend_from_slice(format!("3,\"{s}\",\"\"\r\n").as_bytes());
    source.extend_from_slice(&[format!("4,{s},bad").as_bytes(), &[0xFF, 0xFE], b"bytes\r\n"].concat());
    source.extend_from_slice(b"5,19999999,someone else\r\n");
    source.extend_from_slice(format!("6,{s},last line without newline").as_bytes());
    fs::write(input.join("mimiciv/hosp/labevents.csv"), &source).unwrap();

    let output = tmp.path().join("out");
    let summary = build(&input, &output, &[]);
    assert_balanced(&summary);
    let t = &summary["tables"]["hosp/labevents"];
    assert_eq!((t["read"].as_u64(), t["written"].as_u64(), t["outside_cohort"].as_u64()), (Some(6), Some(5), Some(1)));

    let got = fs::read(output.join(format!("patient_{s}/Hosp/labevents.csv"))).unwrap();
    let mut want: Vec<u8> = Vec::new();
    want.extend_from_slice(b",labevent_id,subject_id,comments\n");
    // The quoted CRLF inside the value is data and stays; the record's own CRLF becomes LF.
    want.extend_from_slice(format!("0,1,{s},\"a, b \"\"c\"\"\r\nd\"\n").as_bytes());
    want.extend_from_slice(format!("1,2,{s},trailing  \n").as_bytes());
    want.extend_from_slice(format!("2,3,\"{s}\",\"\"\n").as_bytes());
    want.extend_from_slice(&[format!("3,4,{s},bad").as_bytes(), &[0xFF, 0xFE], b"bytes\n"].concat());
    want.extend_from_slice(format!("5,6,{s},last line without newline\n").as_bytes());
    assert_eq!(String::from_utf8_lossy(&got), String::from_utf8_lossy(&want));
    assert_eq!(got, want);
}
