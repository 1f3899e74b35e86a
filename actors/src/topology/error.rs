//! Errors in a topology file, each naming the file, the line and the
//! component it concerns.

use std::fmt;
use std::path::PathBuf;

/// One mistake in a topology file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopologyError {
    pub file: PathBuf,
    /// 1-based line, when the mistake is at one place in the file.
    pub line: Option<usize>,
    /// The `[stages.NAME]` the mistake is in, if any.
    pub component: Option<String>,
    pub message: String,
}

impl fmt::Display for TopologyError {
    /// `topologies/demo.toml:12: stage 'decode': unknown kind 'decodr'`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if let Some(component) = &self.component {
            write!(f, ": stage '{component}'")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for TopologyError {}

/// Every mistake found in one topology file, in file order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopologyErrors(pub Vec<TopologyError>);

impl fmt::Display for TopologyErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for TopologyErrors {}
