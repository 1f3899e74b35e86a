//! Python's text forms of numbers and values, as OpenCLIP's logs print them:
//! the float format specs its log lines use (`.3f`, `#g`, `#.5g`, `5f`), the
//! `repr` of a float, and `str()` of the argument values it writes to
//! params.txt. Also the JSON form of those values (Python's `json` dialect,
//! which spells non-finite floats `NaN`/`Infinity`), for the wandb config.

use std::fmt;

/// Python's `format(value, f"{width}.{precision}f")`: fixed point, right
/// aligned in `width` characters.
pub fn fixed(value: f64, precision: usize, width: usize) -> String {
    match non_finite(value) {
        Some(text) => format!("{text:>width$}"),
        None => format!("{value:>width$.precision$}"),
    }
}

/// Python's `format(value, f".{precision}g")`, or with `alternate` the `#`
/// form that keeps trailing zeros and the decimal point (`#g` is
/// `precision` 6).
pub fn general(value: f64, precision: usize, alternate: bool) -> String {
    if let Some(text) = non_finite(value) {
        return text.to_string();
    }
    let precision = precision.max(1);
    // The exponent of the value once rounded to `precision` significant digits
    // decides between the fixed and the scientific layout.
    let scientific = format!("{:.*e}", precision - 1, value);
    let (mantissa, exponent) = split_exponent(&scientific);
    if (-4..precision as i32).contains(&exponent) {
        let decimals = (precision as i32 - 1 - exponent) as usize;
        finish_digits(format!("{value:.decimals$}"), alternate)
    } else {
        let mantissa = finish_digits(mantissa.to_string(), alternate);
        format!("{mantissa}{}", python_exponent(exponent))
    }
}

/// Python's `repr(value)` of a float: the shortest digits that read back to
/// the same value (of two such, the nearer; on a tie, the even one), in
/// scientific form below 1e-4 and from 1e16 up.
pub fn float_repr(value: f64) -> String {
    if let Some(text) = non_finite(value) {
        return text.to_string();
    }
    // Rust finds how many digits are needed; its pick among equally short
    // candidates can differ from Python's, so the digits are then taken
    // correctly rounded (ties to even) at that length.
    let shortest = format!("{value:e}");
    let (shortest_mantissa, _) = split_exponent(&shortest);
    let significant = shortest_mantissa
        .chars()
        .filter(char::is_ascii_digit)
        .count();
    let rounded = format!("{:.*e}", significant - 1, value);
    let (mantissa, exponent) = split_exponent(&rounded);
    let sign = if mantissa.starts_with('-') { "-" } else { "" };
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    if (0..16).contains(&exponent) {
        let whole_len = exponent as usize + 1;
        let whole = format!("{:0<whole_len$}", &digits[..whole_len.min(digits.len())]);
        let fraction = digits
            .get(whole_len..)
            .filter(|rest| !rest.is_empty())
            .unwrap_or("0");
        format!("{sign}{whole}.{fraction}")
    } else if (-4..0).contains(&exponent) {
        let zeros = "0".repeat((-exponent - 1) as usize);
        format!("{sign}0.{zeros}{digits}")
    } else {
        format!("{mantissa}{}", python_exponent(exponent))
    }
}

/// Python's `str.capitalize()`: first character upper case, the rest lower.
pub fn capitalize(text: &str) -> String {
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first
            .to_uppercase()
            .chain(chars.flat_map(char::to_lowercase))
            .collect(),
        None => String::new(),
    }
}

fn non_finite(value: f64) -> Option<&'static str> {
    if value.is_nan() {
        Some("nan")
    } else if value == f64::INFINITY {
        Some("inf")
    } else if value == f64::NEG_INFINITY {
        Some("-inf")
    } else {
        None
    }
}

/// Splits Rust's `1.25e-5` into `("1.25", -5)`.
fn split_exponent(scientific: &str) -> (&str, i32) {
    let (mantissa, exponent) = scientific
        .split_once('e')
        .expect("Rust's {:e} always writes an exponent");
    (mantissa, exponent.parse().expect("an integer exponent"))
}

/// Python writes exponents with a sign and at least two digits: `e-05`.
fn python_exponent(exponent: i32) -> String {
    let sign = if exponent < 0 { '-' } else { '+' };
    format!("e{sign}{:02}", exponent.abs())
}

/// The `#` flag keeps trailing zeros and always shows the decimal point;
/// without it both go.
fn finish_digits(mut digits: String, alternate: bool) -> String {
    if alternate {
        if !digits.contains('.') {
            digits.push('.');
        }
    } else if digits.contains('.') {
        let kept = digits.trim_end_matches('0').trim_end_matches('.').len();
        digits.truncate(kept);
    }
    digits
}

/// A value of OpenCLIP's parsed arguments (`vars(args)`), printed as Python's
/// `str()` prints it, so params.txt and the log read the same.
#[derive(Debug, Clone, PartialEq)]
pub enum PyValue {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    List(Vec<PyValue>),
    Tuple(Vec<PyValue>),
    /// Keys in insertion order, as a Python dict keeps them.
    Dict(Vec<(String, PyValue)>),
}

impl PyValue {
    /// Python's `repr()`: strings quoted, everything else as `str()`.
    pub fn repr(&self) -> String {
        match self {
            PyValue::Str(text) => str_repr(text),
            other => other.to_string(),
        }
    }

    /// The value in JSON as Python's `json.dumps` writes it (tuples as
    /// arrays, non-finite floats as `NaN`/`Infinity`).
    pub fn to_json(&self) -> String {
        match self {
            PyValue::None => "null".to_string(),
            PyValue::Bool(flag) => flag.to_string(),
            PyValue::Int(number) => number.to_string(),
            PyValue::Float(number) => json_float(*number),
            PyValue::Str(text) => json_string(text),
            PyValue::List(items) | PyValue::Tuple(items) => {
                let items: Vec<String> = items.iter().map(PyValue::to_json).collect();
                format!("[{}]", items.join(", "))
            }
            PyValue::Dict(entries) => json_object(
                entries
                    .iter()
                    .map(|(key, value)| (key.as_str(), value.to_json())),
            ),
        }
    }
}

impl fmt::Display for PyValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let reprs = |items: &[PyValue]| items.iter().map(PyValue::repr).collect::<Vec<_>>();
        match self {
            PyValue::None => f.write_str("None"),
            PyValue::Bool(true) => f.write_str("True"),
            PyValue::Bool(false) => f.write_str("False"),
            PyValue::Int(number) => write!(f, "{number}"),
            PyValue::Float(number) => f.write_str(&float_repr(*number)),
            PyValue::Str(text) => f.write_str(text),
            PyValue::List(items) => write!(f, "[{}]", reprs(items).join(", ")),
            PyValue::Tuple(items) if items.len() == 1 => write!(f, "({},)", items[0].repr()),
            PyValue::Tuple(items) => write!(f, "({})", reprs(items).join(", ")),
            PyValue::Dict(entries) => {
                let entries: Vec<String> = entries
                    .iter()
                    .map(|(key, value)| format!("{}: {}", str_repr(key), value.repr()))
                    .collect();
                write!(f, "{{{}}}", entries.join(", "))
            }
        }
    }
}

/// Python's `repr()` of a string: single quotes unless the text holds a
/// single quote and no double quote; backslash escapes for the quote,
/// backslash and unprintable characters.
fn str_repr(text: &str) -> String {
    let quote = if text.contains('\'') && !text.contains('"') {
        '"'
    } else {
        '\''
    };
    let mut out = String::with_capacity(text.len() + 2);
    out.push(quote);
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || (0x7f..0xa0).contains(&(c as u32)) => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push(quote);
    out
}

/// A float in Python's JSON dialect.
pub(crate) fn json_float(value: f64) -> String {
    if value.is_nan() {
        "NaN".to_string()
    } else if value.is_infinite() {
        if value > 0.0 { "Infinity" } else { "-Infinity" }.to_string()
    } else {
        float_repr(value)
    }
}

pub(crate) fn json_string(text: &str) -> String {
    serde_json::to_string(text).expect("a string always serialises")
}

/// `{"key": value, ...}` from keys and already-encoded JSON values.
pub(crate) fn json_object<'a>(entries: impl Iterator<Item = (&'a str, String)>) -> String {
    let entries: Vec<String> = entries
        .map(|(key, value)| format!("{}: {value}", json_string(key)))
        .collect();
    format!("{{{}}}", entries.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capitalize_lowers_the_rest() {
        assert_eq!(capitalize("contrastive_Loss"), "Contrastive_loss");
        assert_eq!(capitalize(""), "");
    }

    #[test]
    fn json_keeps_non_finite_floats_readable_by_python() {
        let value = PyValue::List(vec![
            PyValue::Float(f64::NAN),
            PyValue::Float(f64::NEG_INFINITY),
            PyValue::Tuple(vec![PyValue::Int(1)]),
        ]);
        assert_eq!(value.to_json(), "[NaN, -Infinity, [1]]");
    }
}
