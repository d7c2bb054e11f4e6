//! The PhysioNet-sized part of a mirror: chest X-ray study folders and reports of patients who
//! are in no eye-tracking dataset (MIMIC-CXR-JPG has 65,379 patients, 227,835 studies, 377,110
//! images; with wget's `index.html` pages about a million files in 358,000 folders). A build
//! reads none of it; the daemon must live beside it without watching or walking it.

use std::fs;
use std::io::Write;
use std::path::Path;

use super::imaging::INDEX_HTML;
use super::spec::{Bulk, Rng};

/// A fake dicom id (the 44-character form) from a counter.
fn dicom_id(n: u64) -> String {
    let h = n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    format!(
        "{:08x}-{:08x}-{:08x}-{:08x}-{:08x}",
        (h >> 32) as u32,
        h as u32,
        (n >> 32) as u32 ^ 0xb01c,
        n as u32,
        (h >> 16) as u32
    )
}

/// Writes `patients` patients' study folders (3–4 studies of 1–2 tiny JPGs) under
/// `<jpg>/files` and their reports under `<reports>/files`, an `index.html` in every folder,
/// and appends their images to the CXR metadata as one more gzip member (or plain lines).
pub(super) fn write(jpg: &Path, reports: &Path, patients: u64, rng: &mut Rng) -> anyhow::Result<Bulk> {
    let mut bulk = Bulk { patients, ..Default::default() };
    let mut meta = Vec::new();
    let page = |dir: &Path, bulk: &mut Bulk| -> std::io::Result<()> {
        fs::create_dir_all(dir)?;
        bulk.folders += 1;
        bulk.files += 1;
        fs::write(dir.join("index.html"), INDEX_HTML)
    };
    for i in 0..patients {
        // Subject ids of their own range: outside every cohort the synthetic world plants.
        let subject = 18_000_000 + i * 7 + 3;
        let group = format!("p{}", &subject.to_string()[..2]);
        let pdir = jpg.join("files").join(&group).join(format!("p{subject}"));
        let rdir = reports.join("files").join(&group).join(format!("p{subject}"));
        page(&pdir, &mut bulk)?;
        page(&rdir, &mut bulk)?;
        for s in 0..(3 + rng.below(2)) {
            let study = 58_000_000 + i * 5 + s;
            let sdir = pdir.join(format!("s{study}"));
            page(&sdir, &mut bulk)?;
            for _ in 0..(1 + rng.below(2)) {
                let dicom = dicom_id(bulk.images);
                fs::write(sdir.join(format!("{dicom}.jpg")), b"\xff\xd8\xff\xe0fake jpeg\xff\xd9")?;
                writeln!(meta, "{dicom},{subject},{study},CHEST (PA AND LAT),PA,3056,2544,21800101,120000.000,,postero-anterior,Erect")?;
                bulk.images += 1;
                bulk.files += 1;
            }
            fs::write(rdir.join(format!("s{study}.txt")), b"FINAL REPORT\n IMPRESSION: no acute process.\n")?;
            bulk.studies += 1;
            bulk.files += 1;
        }
    }
    append_metadata(jpg, &meta)?;
    Ok(bulk)
}

/// Appends rows to `mimic-cxr-2.0.0-metadata.csv[.gz]` (a new gzip member for `.gz`).
fn append_metadata(jpg: &Path, rows: &[u8]) -> anyhow::Result<()> {
    let gz = jpg.join("mimic-cxr-2.0.0-metadata.csv.gz");
    let plain = jpg.join("mimic-cxr-2.0.0-metadata.csv");
    if gz.is_file() {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(rows)?;
        fs::OpenOptions::new().append(true).open(&gz)?.write_all(&enc.finish()?)?;
    } else if plain.is_file() {
        fs::OpenOptions::new().append(true).open(&plain)?.write_all(rows)?;
    }
    Ok(())
}
