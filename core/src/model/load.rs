//! Strict loading of named tensors into a model's VarStore: every variable
//! must be present with the same shape, and nothing may be left over, the way
//! `load_state_dict(strict=True)` behaves, or of a named part of them.
//! Errors name the offending tensors.

use std::collections::BTreeSet;

use anyhow::{bail, Result};
use tch::{nn::VarStore, Tensor};

/// Copies `tensors` into `vs`. `source` names the file in error messages.
pub fn load_strict(vs: &VarStore, tensors: &[(String, Tensor)], source: &str) -> Result<()> {
    let variables = vs.variables();
    let given: BTreeSet<&str> = tensors.iter().map(|(name, _)| name.as_str()).collect();
    let missing: Vec<&str> = variables
        .keys()
        .map(String::as_str)
        .filter(|name| !given.contains(name))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let unexpected: Vec<&str> = given
        .iter()
        .copied()
        .filter(|name| !variables.contains_key(*name))
        .collect();
    if !missing.is_empty() || !unexpected.is_empty() {
        bail!(
            "{source}: weights do not match the model: missing {} tensor(s) [{}], unexpected {} tensor(s) [{}]",
            missing.len(),
            preview(&missing),
            unexpected.len(),
            preview(&unexpected)
        );
    }
    copy_into(vs, tensors, source)
}

/// Copies `tensors`, each of them a variable of `vs`, into it, leaving the
/// other variables as they are (HuggingFace weights for a text tower
/// inside a freshly built model).
pub fn load_subset(vs: &VarStore, tensors: &[(String, Tensor)], source: &str) -> Result<()> {
    let variables = vs.variables();
    if let Some((name, _)) = tensors
        .iter()
        .find(|(name, _)| !variables.contains_key(name))
    {
        bail!("{source}: tensor `{name}` is not one of the model's");
    }
    copy_into(vs, tensors, source)
}

fn copy_into(vs: &VarStore, tensors: &[(String, Tensor)], source: &str) -> Result<()> {
    let variables = vs.variables();
    for (name, value) in tensors {
        let target = &variables[name];
        if target.size() != value.size() {
            bail!(
                "{source}: tensor `{name}` has shape {:?}, the model expects {:?}",
                value.size(),
                target.size()
            );
        }
    }
    tch::no_grad(|| {
        for (name, value) in tensors {
            let mut target = variables[name].shallow_clone();
            target.copy_(value);
        }
    });
    Ok(())
}

fn preview(names: &[&str]) -> String {
    const SHOWN: usize = 8;
    let mut text = names
        .iter()
        .take(SHOWN)
        .copied()
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > SHOWN {
        text.push_str(&format!(", ... ({} more)", names.len() - SHOWN));
    }
    text
}
