//! `--copy-codebase` for `clipflow train`. OpenCLIP copies its Python source
//! tree into `<--logs>/<name>/code` so a run can be reproduced; clipflow is
//! one binary, so what reproduces a run is the topology it ran and the flags
//! it resolved, and those are what `code/` receives.

use std::fs;
use std::io::ErrorKind;
use std::path::Path;

use anyhow::{bail, Context, Result};

/// The file in `code/` holding the resolved flags, one `name: value` a line
/// in the order given (the layout of OpenCLIP's `params.txt`).
pub const FLAGS_FILE: &str = "flags.txt";

/// Writes each of `topology_files` (name in `code/`, text: the topology and
/// the files it extends) and `<run_dir>/code/flags.txt` (`resolved_flags`).
/// Refuses, as OpenCLIP does, when `code/` already exists: that experiment
/// name is taken. A name is a file name such as `train-data.toml`.
pub fn copy_run_configuration(
    run_dir: &Path,
    topology_files: &[(String, &str)],
    resolved_flags: &[(String, String)],
) -> Result<()> {
    for (name, _) in topology_files {
        let is_plain_file_name = Path::new(name)
            .file_name()
            .is_some_and(|file_name| file_name == name.as_str());
        if !is_plain_file_name || name == FLAGS_FILE {
            bail!("--copy-codebase: {name:?} cannot name a topology file's copy; give a file name such as train-data.toml");
        }
    }
    fs::create_dir_all(run_dir)
        .with_context(|| format!("--copy-codebase: creating {}", run_dir.display()))?;
    let code = run_dir.join("code");
    match fs::create_dir(&code) {
        Err(e) if e.kind() == ErrorKind::AlreadyExists => bail!(
            "--copy-codebase: {} already exists, so this experiment was run before; use --name to name a new one",
            code.display()
        ),
        created => created.with_context(|| format!("--copy-codebase: creating {}", code.display()))?,
    }
    let flags: String = resolved_flags
        .iter()
        .map(|(name, value)| format!("{name}: {value}\n"))
        .collect();
    let files = topology_files
        .iter()
        .map(|(name, text)| (name.as_str(), *text))
        .chain([(FLAGS_FILE, flags.as_str())]);
    for (file_name, text) in files {
        let path = code.join(file_name);
        fs::write(&path, text)
            .with_context(|| format!("--copy-codebase: writing {}", path.display()))?;
    }
    Ok(())
}
