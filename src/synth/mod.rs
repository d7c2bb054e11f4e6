//! `synth`: a deterministic generator of a whole fake input tree (SPEC §2), every dataset in its
//! exact schema (`schemas.md`), with the defects and linking cases of SPEC §3–4 planted.
//!
//! The big tables (labevents, chartevents) are generated row by row straight into the (gzip)
//! writer, so a multi-GB table needs no memory; `--order shuffled` draws each row's subject at
//! random instead of grouping rows by subject.

mod bulk;
mod clinical;
mod imaging;
mod mirror;
mod spec;

use std::fs::{self};
use std::path::Path;

use anyhow::Context;

use spec::write_file;
pub use spec::{Layout, LayoutKind, MimicIvVersion, Order, Planted, Rng, Subject, SynthSpec};

/// Writes the whole input tree under `root`, in `spec.layout`; `synth-planted.json` goes to
/// `root` itself whatever the layout.
pub fn generate(root: &Path, spec: &SynthSpec) -> anyhow::Result<Planted> {
    fs::create_dir_all(root).with_context(|| format!("creating {}", root.display()))?;
    let roots = spec::dataset_roots(root, spec.layout);
    // The same data in every layout (the tests compare builds of both): only folders differ.
    let core = spec.layout == Layout::Physionet { mimiciv: MimicIvVersion::V1_0 };
    let mut rng = Rng::new(spec.seed);
    let subjects: Vec<Subject> = match &spec.mimiciv {
        Some(dir) => clinical::copy_mimiciv(dir, &roots.mimiciv, spec.patients, core)?,
        None => {
            let cohort = (0..spec.patients).map(|i| Subject {
                id: 10_000_000 + 1_009 * i as u64 + 32,
                in_cohort: true,
                index: i,
            });
            let others =
                (0..spec.others).map(|i| Subject { id: 11_000_000 + 1_013 * i as u64 + 7, in_cohort: false, index: i });
            cohort.chain(others).collect()
        }
    };
    let world = imaging::plan_world(&subjects, &mut rng);
    if spec.mimiciv.is_none() {
        clinical::write_mimiciv(&roots.mimiciv, &subjects, &world, spec, core, &mut rng)?;
    }
    clinical::write_ed(&roots.mimic_iv_ed.join("ed"), &subjects, &world, spec.gzip, &mut rng)?;
    let mut planted = imaging::write_imaging(&roots, &subjects, &world, spec, &mut rng)?;
    if spec.cxr_bulk_patients > 0 {
        planted.bulk = bulk::write(&roots.mimic_cxr_jpg, &roots.mimic_cxr, spec.cxr_bulk_patients, &mut rng)
            .context("writing the mirror-sized chest X-ray tree")?;
    }
    if let Layout::Physionet { .. } = spec.layout {
        mirror::finish(root, &roots).context("writing the mirror's index.html and SHA256SUMS.txt files")?;
    }
    write_file(&root.join("synth-planted.json"), &serde_json::to_vec_pretty(&planted)?)?;
    Ok(planted)
}
