//! The generator's vocabulary: what to make (the spec and layout), the world's subjects, the
//! deterministic random numbers, and the table writer that streams rows to (gzip) files.

use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use flate2::write::GzEncoder;
use flate2::Compression;
use serde::Serialize;

use crate::layout::PerDataset;

/// The row order of the big synthetic tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Order {
    /// Rows grouped by subject, as MIMIC-IV ships them.
    Grouped,
    /// Rows in random order.
    Shuffled,
}

/// Which layout `--layout` asks for (the MIMIC-IV version is a flag of its own).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LayoutKind {
    /// The short layout (`mimiciv/`, `mimic-cxr-jpg/`, …).
    Short,
    /// A PhysioNet wget mirror (`physionet.org/files/<slug>/<version>/`).
    Physionet,
}

/// The MIMIC-IV versions the mirror layout can be written as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum MimicIvVersion {
    /// admissions, patients and transfers in `core/`.
    #[value(name = "1.0")]
    V1_0,
    /// MIMIC-IV 2.2 (the demo's version).
    #[value(name = "2.2")]
    V2_2,
    /// MIMIC-IV 3.1.
    #[value(name = "3.1")]
    V3_1,
}

impl MimicIvVersion {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            MimicIvVersion::V1_0 => "1.0",
            MimicIvVersion::V2_2 => "2.2",
            MimicIvVersion::V3_1 => "3.1",
        }
    }
}

/// Where the datasets are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// SPEC §2's short layout: `<root>/mimiciv/hosp`, `<root>/reflacx`, ….
    Short,
    /// A PhysioNet wget mirror: `<root>/physionet.org/files/<slug>/<version>/…`, an
    /// `index.html` in every folder and a `SHA256SUMS.txt` per version.
    Physionet {
        /// The MIMIC-IV version folder written.
        mimiciv: MimicIvVersion,
    },
}

/// The folder of each dataset (its version folder in the mirror layout).
pub(crate) type DatasetRoots = PerDataset<PathBuf>;

/// The dataset folders of a tree at `root` in this layout.
pub(crate) fn dataset_roots(root: &Path, layout: Layout) -> DatasetRoots {
    use crate::layout::DatasetKey as K;
    PerDataset::from_fn(|key| match layout {
        Layout::Short => root.join(key.short_name()),
        Layout::Physionet { mimiciv } => {
            let version = match key {
                K::MimicIv => mimiciv.as_str(),
                K::MimicIvEd => "2.2",
                K::MimicCxrJpg | K::MimicCxr => "2.0.0",
                K::Reflacx | K::EgdCxr => "1.0.0",
            };
            files_dir(root).join(key.slug()).join(version)
        }
    })
}

/// What `mimic-eye synth` generates.
#[derive(Debug, Clone)]
pub struct SynthSpec {
    /// Patients in the cohort (they get chest X-rays and eye-tracking data).
    pub patients: usize,
    /// The random seed: the same seed gives the same tree.
    pub seed: u64,
    /// Rows per subject in labevents and chartevents.
    pub rows_per_patient: usize,
    /// Rows per subject in chartevents, when it differs (MIMIC-IV 3.1 has 2.7 times as many
    /// chartevents rows as labevents rows).
    pub chart_rows_per_patient: Option<usize>,
    /// Row order of the big tables.
    pub order: Order,
    /// Subjects outside the cohort (clinical rows only, plus CXR images not in REFLACX/EyeGaze).
    pub others: usize,
    /// MIMIC tables as `.csv.gz` (with several gzip members) rather than `.csv`.
    pub gzip: bool,
    /// Real MIMIC-IV tables to use (e.g. the demo) instead of fake hosp/icu tables.
    pub mimiciv: Option<PathBuf>,
    /// Folder layout of the tree.
    pub layout: Layout,
    /// Chest X-ray patients in no eye-tracking dataset, as a real mirror has 65,379 of them
    /// (study folders, images, reports, `index.html` pages; about 15 files each).
    pub cxr_bulk_patients: u64,
}

impl SynthSpec {
    /// The small world `mimic-eye demo` builds.
    pub fn demo() -> Self {
        Self {
            patients: 24,
            seed: 7,
            rows_per_patient: 30,
            chart_rows_per_patient: None,
            order: Order::Grouped,
            others: 24,
            gzip: true,
            mimiciv: None,
            layout: Layout::Short,
            cxr_bulk_patients: 0,
        }
    }
}

/// What the generator planted: the counts a build of this tree must find.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Planted {
    /// Subjects in the generated world.
    pub patients: usize,
    pub(crate) images: usize,
    pub(crate) linked_images_paper: usize,
    pub(crate) linked_images_release: usize,
    pub(crate) linked_images_window7: usize,
    pub(crate) stays_paper: usize,
    pub(crate) eye_gaze_short_ids: ShortIds,
    pub(crate) reflacx_readings: usize,
    pub(crate) reflacx_bad_ids: usize,
    /// The subject ids of the expected cohort.
    pub cohort: Vec<u64>,
    /// The mirror-sized chest X-ray tree beside the world (none unless asked for).
    pub bulk: Bulk,
}

#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct ShortIds {
    /// (short id, rows) per case, for eye_gaze.csv; fixations.csv has the same cases.
    pub dropped_rows: usize,
    pub(crate) replaced_rows: usize,
    pub(crate) no_candidate_rows: usize,
    pub(crate) ambiguous_rows: usize,
    pub(crate) calibration_rows: usize,
    pub(crate) replaced_id: String,
}

impl Planted {
    /// A one-line description of what was generated and planted.
    pub fn describe(&self) -> String {
        format!(
            "{} patients, {} images, linked images {} (paper) / {} (release) / {} (window 7 days), {} REFLACX readings",
            self.patients,
            self.images,
            self.linked_images_paper,
            self.linked_images_release,
            self.linked_images_window7,
            self.reflacx_readings
        )
    }
}

/// SplitMix64: small, fast, deterministic across platforms.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed ^ 0x5DEE_CE66_D1CE_4E5B)
    }
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next_u64() % n
        }
    }
    pub(crate) fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
    pub(crate) fn hex8(&mut self) -> String {
        format!("{:08x}", self.next_u64() as u32)
    }
    pub(crate) fn dicom(&mut self) -> String {
        (0..5).map(|_| self.hex8()).collect::<Vec<_>>().join("-")
    }
}

/// A CSV table being written: plain or gzip, with a new gzip member every `member_rows` rows.
pub(super) struct TableOut {
    path: PathBuf,
    inner: Out,
    rows: u64,
    member_rows: u64,
    crlf: bool,
}

enum Out {
    Plain(BufWriter<File>),
    Gzip(Box<GzEncoder<BufWriter<File>>>),
}

impl TableOut {
    pub(super) fn create(path: &Path, header: &str, gzip: bool) -> io::Result<Self> {
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir)?;
        }
        let file = BufWriter::with_capacity(1 << 20, File::create(path)?);
        let inner =
            if gzip { Out::Gzip(Box::new(GzEncoder::new(file, Compression::fast()))) } else { Out::Plain(file) };
        let mut t = Self { path: path.to_path_buf(), inner, rows: 0, member_rows: 0, crlf: false };
        t.line(header)?;
        t.rows = 0;
        Ok(t)
    }

    /// A MIMIC table: `<dir>/<name>.csv[.gz]`.
    pub(super) fn mimic(dir: &Path, name: &str, header: &str, gzip: bool) -> io::Result<Self> {
        let file = if gzip { format!("{name}.csv.gz") } else { format!("{name}.csv") };
        let mut t = Self::create(&dir.join(file), header, gzip)?;
        t.member_rows = 50_000; // several gzip members, as concatenated downloads have
        Ok(t)
    }

    /// CRLF line ends (REFLACX files are written that way).
    pub(super) fn crlf(mut self) -> Self {
        self.crlf = true;
        self
    }

    pub(super) fn line(&mut self, line: &str) -> io::Result<()> {
        let eol: &[u8] = if self.crlf { b"\r\n" } else { b"\n" };
        let w: &mut dyn Write = match &mut self.inner {
            Out::Plain(w) => w,
            Out::Gzip(w) => w,
        };
        w.write_all(line.as_bytes())?;
        w.write_all(eol)?;
        self.rows += 1;
        if self.member_rows > 0 && self.rows % self.member_rows == 0 {
            self.new_member()?;
        }
        Ok(())
    }

    fn new_member(&mut self) -> io::Result<()> {
        if let Out::Gzip(_) = self.inner {
            let old = std::mem::replace(&mut self.inner, Out::Plain(BufWriter::new(File::open("/dev/null")?)));
            if let Out::Gzip(enc) = old {
                let file = enc.finish()?;
                self.inner = Out::Gzip(Box::new(GzEncoder::new(file, Compression::fast())));
            }
        }
        Ok(())
    }

    pub(super) fn finish(self) -> io::Result<()> {
        let file = match self.inner {
            Out::Plain(w) => w,
            Out::Gzip(enc) => enc.finish()?,
        };
        file.into_inner().map_err(|e| e.into_error())?.sync_all().with_context_io(&self.path)
    }
}

trait IoContext<T> {
    fn with_context_io(self, path: &Path) -> io::Result<T>;
}
impl<T> IoContext<T> for io::Result<T> {
    fn with_context_io(self, path: &Path) -> io::Result<T> {
        self.map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))
    }
}

/// Writes a small whole file, creating its folder.
pub(super) fn write_file(path: &Path, bytes: &[u8]) -> io::Result<()> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir)?;
    }
    fs::write(path, bytes)
}

/// A subject in the generated world, and what the imaging part planted for it.
#[derive(Debug, Clone)]
pub struct Subject {
    pub(crate) id: u64,
    pub(crate) in_cohort: bool,
    /// Its position in the generated world.
    pub index: usize,
}

/// What the bulk tree added.
#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub struct Bulk {
    pub patients: u64,
    pub studies: u64,
    pub images: u64,
    pub files: u64,
    pub folders: u64,
}

/// `<root>/physionet.org/files`: where wget puts PhysioNet's projects.
pub(super) fn files_dir(root: &Path) -> PathBuf {
    root.join("physionet.org").join("files")
}
