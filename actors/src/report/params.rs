//! params.txt: every training argument as `name: value`, one a line, sorted
//! by name, as OpenCLIP's main writes it next to out.log (values in Python's
//! `str()` form; [`super::PyValue`] gives it).

use std::path::Path;

use anyhow::{Context, Result};

/// The `name: value` lines, sorted by name (Python sorts the names by code
/// point, which is the byte order of UTF-8).
pub fn params_lines(params: &[(String, String)]) -> Vec<String> {
    let mut sorted: Vec<&(String, String)> = params.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    sorted
        .into_iter()
        .map(|(name, value)| format!("{name}: {value}"))
        .collect()
}

/// Writes params.txt at `path` (replacing it) and returns its lines, which
/// OpenCLIP also logs, each indented by two spaces, after `Params:`.
pub fn write_params_txt(path: &Path, params: &[(String, String)]) -> Result<Vec<String>> {
    let lines = params_lines(params);
    let text: String = lines.iter().map(|line| format!("{line}\n")).collect();
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    Ok(lines)
}
