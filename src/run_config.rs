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

/// Writes `<run_dir>/code/<topology_name>` (the topology's text) and
/// `<run_dir>/code/flags.txt` (`resolved_flags`). Refuses, as OpenCLIP does,
/// when `code/` already exists: that experiment name is taken.
/// `topology_name` is a file name such as `train-data.toml`.
pub fn copy_run_configuration(
    run_dir: &Path,
    topology_name: &str,
    topology_text: &str,
    resolved_flags: &[(String, String)],
) -> Result<()> {
    let is_plain_file_name = Path::new(topology_name)
        .file_name()
        .is_some_and(|name| name == topology_name);
    if !is_plain_file_name || topology_name == FLAGS_FILE {
        bail!("--copy-codebase: {topology_name:?} cannot name the topology's copy; give a file name such as train-data.toml");
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
    for (file_name, text) in [(topology_name, topology_text), (FLAGS_FILE, flags.as_str())] {
        let path = code.join(file_name);
        fs::write(&path, text)
            .with_context(|| format!("--copy-codebase: writing {}", path.display()))?;
    }
    Ok(())
}
