//! `mimic-eye validate`: what an operator checks before starting the service. The config
//! parses and resolves, the input is a readable folder holding the datasets a build needs, the
//! output is (or can be made) a folder this user can write, and the listener's address is
//! said. Every problem is named; the exit code says whether `run` would start.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use anyhow::bail;

use crate::cli::Settings;
use crate::config::FilesMode;

/// Checks `settings` and prints what it found; an error names every problem.
pub fn validate(settings: Settings) -> anyhow::Result<()> {
    let source = settings.config.as_ref().map_or("none (flags and defaults)".to_string(), |p| p.display().to_string());
    let config = settings.resolve()?;
    println!("config   {source}: parses and resolves");
    let mut problems = Vec::new();
    match std::fs::read_dir(&config.input) {
        Ok(_) => println!("input    {}: a readable folder", config.input.display()),
        Err(e) => problems.push(format!("input {} cannot be read: {e}", config.input.display())),
    }
    match output_state(&config.output) {
        Ok(state) => println!("output   {}: {state}", config.output.display()),
        Err(e) => problems.push(e),
    }
    println!(
        "metrics  {} ({})",
        config.metrics_addr,
        if config.metrics_addr.ip().is_loopback() { "loopback" } else { "NOT loopback: allowed by the config" }
    );
    if let Some(note) = files_note(&config) {
        println!("files    {note}");
    }
    let inventory = crate::Inventory::gather(&config);
    print!("{}", inventory.text());
    if !inventory.ok() {
        problems.push("a dataset the build needs is missing (above)".to_string());
    }
    if problems.is_empty() {
        println!("valid: `mimic-eye run` would start with this configuration");
        return Ok(());
    }
    for p in &problems {
        println!("problem: {p}");
    }
    bail!("{} problem(s): {}", problems.len(), problems.join("; "))
}

/// The output folder as a build would find it: a folder (not a link) this user can write, or
/// a folder to be made inside one.
fn output_state(output: &Path) -> Result<String, String> {
    match std::fs::symlink_metadata(output) {
        Ok(m) if m.file_type().is_symlink() => {
            Err(format!("output {} is a symbolic link: name the folder itself", output.display()))
        }
        Ok(m) if !m.is_dir() => Err(format!("output {} is not a folder", output.display())),
        Ok(_) if !crate::sys::can_write(output) => {
            Err(format!("output {} is not writable by this user (uid {})", output.display(), crate::sys::uid()))
        }
        Ok(m) => {
            let mode = m.permissions().mode() & 0o7777;
            let note = if mode & 0o022 != 0 { ": others can write it, the first build makes it 0750" } else { "" };
            Ok(format!("a writable folder, mode {mode:04o}{note}"))
        }
        Err(_) => {
            let parent = output.ancestors().skip(1).find(|a| a.exists()).unwrap_or(Path::new("/"));
            if parent.is_dir() && crate::sys::can_write(parent) {
                Ok(format!("to be made in {} (writable)", parent.display()))
            } else {
                Err(format!("output {} does not exist and {} is not writable", output.display(), parent.display()))
            }
        }
    }
}

/// Hard links cannot cross file systems: the build copies instead, said here before it runs.
fn files_note(config: &crate::Config) -> Option<String> {
    let dev = |p: &Path| p.ancestors().find_map(|a| std::fs::metadata(a).ok()).map(|m| m.dev());
    match config.files {
        FilesMode::Hardlink if dev(&config.input) != dev(&config.output) => Some(
            "hardlink: input and output are on different file systems, so images are copied (set files = \"copy\" to say so)"
                .to_string(),
        ),
        _ => None,
    }
}
