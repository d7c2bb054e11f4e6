//! `mimic-eye verify`: the output checked against its own `SHA256SUMS.txt` (see
//! [`crate::sumscheck`]).

use std::path::Path;

use crate::sums::SUMS_FILE;
use crate::walk::Tree;

/// Re-hashes every file `<output>/SHA256SUMS.txt` lists and looks for files it does not list.
pub fn verify(output: &Path) -> anyhow::Result<crate::sumscheck::Verification> {
    crate::sumscheck::verify_tree(
        output,
        &output.join(SUMS_FILE),
        Tree::Output { state_dir: crate::pipeline::paths::STATE_DIR },
        None,
    )
}
