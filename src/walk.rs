//! A tree's files in the byte order of their relative paths, one folder's names in memory at a
//! time: what a `SHA256SUMS.txt` lists (the output's, or a download's), walked without holding
//! a million paths.

use std::ffi::OsStr;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::sums::SUMS_FILE;

/// Which tree is walked, which decides what its listing leaves out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tree {
    /// A build's output: `SHA256SUMS.txt` and the program's state folder (named by the
    /// output's layout, which walks no trees) at the top are left out; links to files are
    /// listed (`files = "symlink"` places them; `sha256sum` follows them).
    Output { state_dir: &'static str },
    /// A PhysioNet download's version folder: `SHA256SUMS.txt` at the top and wget's
    /// `index.html` pages are left out, and links are not followed (a listed path is checked
    /// inside the tree only).
    Download,
}

/// Calls `each` with every file under `root` that `tree`'s listing covers (relative path
/// bytes), in byte order of the path.
pub(crate) fn each_listable_file(
    root: &Path,
    tree: Tree,
    each: &mut dyn FnMut(&[u8]) -> io::Result<()>,
) -> io::Result<()> {
    fs::read_dir(root)?; // an unreadable root is an error; an unreadable subfolder is skipped
    let mut rel = Vec::new();
    walk(root, tree, &mut rel, each)
}

fn walk(root: &Path, tree: Tree, rel: &mut Vec<u8>, each: &mut dyn FnMut(&[u8]) -> io::Result<()>) -> io::Result<()> {
    // The output is ours: a folder of it that cannot be listed fails the listing, which would
    // otherwise leave its files out. A download's unreadable folder is passed over (its
    // listed files are then reported missing).
    let dir = root.join(OsStr::from_bytes(rel));
    let failed = |e: io::Error| io::Error::new(e.kind(), format!("listing {}: {e}", dir.display()));
    let strict = matches!(tree, Tree::Output { .. });
    let entries = match fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if strict && !rel.is_empty() => return Err(failed(e)),
        Err(_) => return Ok(()),
    };
    let top = rel.is_empty();
    // A folder sorts as "name/": every path below it compares that way against its siblings.
    let mut names: Vec<(Vec<u8>, bool)> = Vec::new();
    for entry in entries {
        let entry = match entry {
            Ok(entry) => entry,
            Err(e) if strict => return Err(failed(e)),
            Err(_) => continue,
        };
        let name = entry.file_name();
        let skipped = match tree {
            Tree::Output { state_dir } => top && (name == state_dir || name == SUMS_FILE),
            Tree::Download => (top && name == SUMS_FILE) || name.eq_ignore_ascii_case("index.html"),
        };
        if skipped {
            continue;
        }
        let kind = match entry.file_type() {
            Ok(kind) => kind,
            Err(e) if strict => return Err(failed(e)),
            Err(_) => continue,
        };
        let is_dir = kind.is_dir();
        let followed = matches!(tree, Tree::Output { .. }) && kind.is_symlink() && entry.path().is_file();
        let listable = kind.is_file() || followed;
        if is_dir || listable {
            let mut key = name.as_bytes().to_vec();
            if is_dir {
                key.push(b'/');
            }
            names.push((key, is_dir));
        }
    }
    names.sort_unstable();
    for (key, is_dir) in names {
        let len = rel.len();
        rel.extend_from_slice(&key);
        let result = if is_dir { walk(root, tree, rel, each) } else { each(rel) };
        rel.truncate(len);
        result?;
    }
    Ok(())
}
