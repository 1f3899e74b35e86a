//! Settings that topology files pass as text: on/off switches
//! (`resampled = "${dataset-resampled}"`) and decimal numbers
//! (`max_bad_fraction = "0.25"`). The loading kinds take these as strings so
//! that one flag declaration serves every value a user may type.

use crate::topology::{SettingError, Settings};

/// A switch written `true`/`false` (also `1`/`0`, `yes`/`no`); `default`
/// when absent or empty.
pub fn switch(settings: &Settings, key: &str, default: bool) -> Result<bool, SettingError> {
    let Some(text) = settings.string(key)? else {
        return Ok(default);
    };
    match text.trim().to_ascii_lowercase().as_str() {
        "" => Ok(default),
        "true" | "1" | "yes" => Ok(true),
        "false" | "0" | "no" => Ok(false),
        _ => Err(invalid(
            key,
            format!("expected true or false, got {text:?}"),
        )),
    }
}

/// A decimal number within `range`; `default` when absent or empty.
pub fn number_in(
    settings: &Settings,
    key: &str,
    range: std::ops::RangeInclusive<f64>,
    default: f64,
) -> Result<f64, SettingError> {
    let Some(text) = settings.string(key)? else {
        return Ok(default);
    };
    if text.trim().is_empty() {
        return Ok(default);
    }
    match text.trim().parse::<f64>() {
        Ok(value) if range.contains(&value) => Ok(value),
        _ => Err(invalid(
            key,
            format!(
                "expected a number from {} to {}, got {text:?}",
                range.start(),
                range.end()
            ),
        )),
    }
}

/// A string setting where an empty value means "not given".
pub fn non_empty(settings: &Settings, key: &str) -> Result<Option<String>, SettingError> {
    Ok(settings.string(key)?.filter(|text| !text.trim().is_empty()))
}

fn invalid(key: &str, message: String) -> SettingError {
    SettingError {
        key: key.to_string(),
        line: None,
        message,
    }
}
