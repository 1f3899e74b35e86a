//! Command-line flags of a topology: the `[flags]` table declares them with
//! their defaults (`workers = 2`), `--workers 4` overrides a default, and
//! `"${workers}"` anywhere in a component's values is replaced by the flag.

use std::collections::BTreeMap;

/// Flag values given on the command line, by name without the dashes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FlagValues(BTreeMap<String, String>);

impl FlagValues {
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets `--name value`.
    pub fn set(&mut self, name: &str, value: &str) {
        self.0.insert(name.to_string(), value.to_string());
    }

    /// Reads `--name value` and `--name=value` pairs, as they follow the
    /// topology file on the command line.
    pub fn parse_args(args: &[String]) -> anyhow::Result<Self> {
        let mut flags = FlagValues::new();
        let mut args = args.iter();
        while let Some(arg) = args.next() {
            let Some(flag) = arg.strip_prefix("--").filter(|f| !f.is_empty()) else {
                anyhow::bail!(
                    "expected a flag like --workers 4 after the topology file, got '{arg}'"
                );
            };
            match flag.split_once('=') {
                Some((name, value)) => flags.set(name, value),
                None => {
                    let value = args
                        .next()
                        .ok_or_else(|| anyhow::anyhow!("flag --{flag} needs a value"))?;
                    flags.set(flag, value);
                }
            }
        }
        Ok(flags)
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (&String, &String)> {
        self.0.iter()
    }
}

/// Parses a command-line value as the type of the flag's default.
pub(crate) fn typed_value(default: &toml::Value, text: &str) -> Result<toml::Value, String> {
    match default {
        toml::Value::Integer(_) => text
            .parse()
            .map(toml::Value::Integer)
            .map_err(|_| format!("expected an integer, got '{text}'")),
        toml::Value::Float(_) => text
            .parse()
            .map(toml::Value::Float)
            .map_err(|_| format!("expected a number, got '{text}'")),
        toml::Value::Boolean(_) => text
            .parse()
            .map(toml::Value::Boolean)
            .map_err(|_| format!("expected true or false, got '{text}'")),
        _ => Ok(toml::Value::String(text.to_string())),
    }
}

/// Replaces flag references in `value`: a string that is exactly
/// `"${name}"` becomes the flag's value with its type; `${name}` inside a
/// longer string is replaced by the flag's text.
pub(crate) fn substitute(
    value: &toml::Value,
    flags: &BTreeMap<String, toml::Value>,
) -> Result<toml::Value, String> {
    match value {
        toml::Value::String(text) => substitute_string(text, flags),
        toml::Value::Array(items) => items
            .iter()
            .map(|item| substitute(item, flags))
            .collect::<Result<Vec<_>, _>>()
            .map(toml::Value::Array),
        toml::Value::Table(table) => table
            .iter()
            .map(|(k, v)| Ok((k.clone(), substitute(v, flags)?)))
            .collect::<Result<toml::Table, String>>()
            .map(toml::Value::Table),
        other => Ok(other.clone()),
    }
}

fn lookup<'a>(
    name: &str,
    flags: &'a BTreeMap<String, toml::Value>,
) -> Result<&'a toml::Value, String> {
    flags.get(name).ok_or_else(|| {
        format!("refers to flag '${{{name}}}', which the [flags] table does not declare")
    })
}

fn substitute_string(
    text: &str,
    flags: &BTreeMap<String, toml::Value>,
) -> Result<toml::Value, String> {
    if let Some(name) = text.strip_prefix("${").and_then(|t| t.strip_suffix('}')) {
        if !name.contains(['$', '{', '}']) {
            return lookup(name, flags).cloned();
        }
    }
    let mut result = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        result.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| format!("'{text}' has an unclosed '${{'"))?;
        match lookup(&after[..end], flags)? {
            toml::Value::String(s) => result.push_str(s),
            other => result.push_str(&other.to_string()),
        }
        rest = &after[end + 1..];
    }
    result.push_str(rest);
    Ok(toml::Value::String(result))
}
