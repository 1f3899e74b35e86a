//! HTML character-reference decoding, in the two flavours the CLIP text
//! cleaning uses:
//!
//! - [`unescape_lenient`]: the browser-style decoding of Python's
//!   `html.unescape` (references with or without `;`, longest-prefix matching
//!   of names, Windows-1252 numbers for C1 references, invalid code points
//!   dropped or replaced).
//! - [`unescape_strict`]: ftfy's cautious variant, which only decodes
//!   references that end in `;` (plus all-caps spellings of lower-case
//!   names, such as `&EACUTE;`), so that prose like `this&not that` survives.

use std::collections::HashMap;
use std::sync::OnceLock;

use regex::{Captures, Regex};

use super::html_entities::HTML5_ENTITIES;

/// Looks a name (without `&`, with its `;` if any) up in the HTML5 table.
fn html5_entity(name: &str) -> Option<&'static str> {
    HTML5_ENTITIES
        .binary_search_by(|(entity, _)| (*entity).cmp(name))
        .ok()
        .map(|index| HTML5_ENTITIES[index].1)
}

/// What a numeric reference to `code` decodes to in a browser: C1 numbers are
/// read as Windows-1252, NUL and out-of-range numbers become U+FFFD, and
/// other control and non-character code points vanish.
fn numeric_reference(code: u64) -> String {
    const C1_AS_WINDOWS_1252: [char; 32] = [
        '\u{20ac}', '\u{81}', '\u{201a}', '\u{192}', '\u{201e}', '\u{2026}', '\u{2020}',
        '\u{2021}', '\u{2c6}', '\u{2030}', '\u{160}', '\u{2039}', '\u{152}', '\u{8d}', '\u{17d}',
        '\u{8f}', '\u{90}', '\u{2018}', '\u{2019}', '\u{201c}', '\u{201d}', '\u{2022}', '\u{2013}',
        '\u{2014}', '\u{2dc}', '\u{2122}', '\u{161}', '\u{203a}', '\u{153}', '\u{9d}', '\u{17e}',
        '\u{178}',
    ];
    match code {
        0 => '\u{fffd}'.to_string(),
        0x0d => '\r'.to_string(),
        0x80..=0x9f => C1_AS_WINDOWS_1252[(code - 0x80) as usize].to_string(),
        0xd800..=0xdfff => '\u{fffd}'.to_string(),
        code if code > 0x10ffff => '\u{fffd}'.to_string(),
        0x01..=0x08 | 0x0b | 0x0e..=0x1f | 0x7f | 0xfdd0..=0xfdef => String::new(),
        code if code & 0xfffe == 0xfffe => String::new(),
        code => char::from_u32(code as u32)
            .map(String::from)
            .unwrap_or_default(),
    }
}

/// Parses the digits of a numeric reference; absurdly long numbers saturate,
/// which still lands them in the "beyond Unicode" case.
fn parse_reference_number(digits: &str, radix: u32) -> u64 {
    digits.chars().fold(0u64, |value, digit| {
        let digit = u64::from(digit.to_digit(radix).unwrap_or(0));
        value.saturating_mul(u64::from(radix)).saturating_add(digit)
    })
}

/// Decodes one reference matched by [`unescape_lenient`]'s pattern (`body`
/// is everything after the `&`).
fn decode_lenient_reference(body: &str) -> String {
    if let Some(number) = body.strip_prefix('#') {
        let number = number.trim_end_matches(';');
        let code = match number.strip_prefix(['x', 'X']) {
            Some(hex) => parse_reference_number(hex, 16),
            None => parse_reference_number(number, 10),
        };
        return numeric_reference(code);
    }
    if let Some(text) = html5_entity(body) {
        return text.to_string();
    }
    // The longest known name that is a prefix of the body, keeping the rest.
    let char_starts: Vec<usize> = body.char_indices().map(|(at, _)| at).collect();
    for prefix_chars in (2..char_starts.len()).rev() {
        let (name, rest) = body.split_at(char_starts[prefix_chars]);
        if let Some(text) = html5_entity(name) {
            return format!("{text}{rest}");
        }
    }
    format!("&{body}")
}

/// Python's `html.unescape`: decodes every HTML character reference the way
/// an HTML5 parser does in text content.
pub(super) fn unescape_lenient(text: &str) -> String {
    static REFERENCE: OnceLock<Regex> = OnceLock::new();
    if !text.contains('&') {
        return text.to_string();
    }
    let reference = REFERENCE.get_or_init(|| {
        Regex::new(r"&(#[0-9]+;?|#[xX][0-9a-fA-F]+;?|[^\t\n\x0c <&#;]{1,32};?)")
            .expect("HTML reference pattern is valid")
    });
    reference
        .replace_all(text, |captures: &Captures| {
            decode_lenient_reference(&captures[1])
        })
        .into_owned()
}

/// The `;`-terminated references ftfy decodes: every HTML5 name that ends in
/// `;`, plus the all-caps spelling of lower-case names where that spelling is
/// not itself a browser-decodable reference (it decodes to the upper case).
fn strict_entities() -> &'static HashMap<String, String> {
    static ENTITIES: OnceLock<HashMap<String, String>> = OnceLock::new();
    ENTITIES.get_or_init(|| {
        let mut entities = HashMap::new();
        for (name, text) in HTML5_ENTITIES
            .iter()
            .filter(|(name, _)| name.ends_with(';'))
        {
            entities.insert(format!("&{name}"), text.to_string());
            if name.to_lowercase() == *name {
                let upper_reference = format!("&{}", name.to_uppercase());
                if unescape_lenient(&upper_reference) == upper_reference {
                    entities.insert(upper_reference, text.to_uppercase());
                }
            }
        }
        entities
    })
}

/// ftfy's `unescape_html`: decodes only unambiguous, `;`-terminated
/// references (see the module documentation).
pub(super) fn unescape_strict(text: &str) -> String {
    static REFERENCE: OnceLock<Regex> = OnceLock::new();
    let reference = REFERENCE.get_or_init(|| {
        Regex::new(r"&#?[0-9A-Za-z]{1,24};").expect("HTML reference pattern is valid")
    });
    reference
        .replace_all(text, |captures: &Captures| {
            let matched = &captures[0];
            if let Some(decoded) = strict_entities().get(matched) {
                return decoded.clone();
            }
            if matched.starts_with("&#") {
                let decoded = unescape_lenient(matched);
                if !decoded.contains(';') {
                    return decoded;
                }
            }
            matched.to_string()
        })
        .into_owned()
}
