//! Caption cleaning before tokenisation, as OpenCLIP does it: ftfy's
//! `fix_text` (mojibake, HTML references, ligatures, character widths, curly
//! quotes, line breaks, terminal escapes, control characters, NFC), then two
//! rounds of browser-style HTML unescaping, then whitespace collapsing with
//! Python's notion of whitespace.

use std::sync::OnceLock;

use regex::Regex;
use unicode_normalization::UnicodeNormalization;

use super::html_unescape::{unescape_lenient, unescape_strict};
use super::mojibake::{fix_c1_controls, fix_encoding};

/// ftfy splits text into segments of at most this many characters (besides
/// splitting after every line break) and fixes each on its own.
const MAX_SEGMENT_CHARS: usize = 1_000_000;

/// Python's `str.isspace`, the whitespace of `str.split` and `str.strip`.
pub(super) fn is_python_space(character: char) -> bool {
    matches!(
        character,
        '\t' | '\n'
            | '\u{0b}'
            | '\u{0c}'
            | '\r'
            | '\u{1c}'..='\u{1f}'
            | ' '
            | '\u{85}'
            | '\u{a0}'
            | '\u{1680}'
            | '\u{2000}'..='\u{200a}'
            | '\u{2028}'
            | '\u{2029}'
            | '\u{202f}'
            | '\u{205f}'
            | '\u{3000}'
    )
}

/// Latin ligatures and digraph letters, spelled out.
fn latin_ligature(character: char) -> Option<&'static str> {
    Some(match character {
        'Ĳ' => "IJ",
        'ĳ' => "ij",
        'ŉ' => "ʼn",
        'Ǳ' => "DZ",
        'ǲ' => "Dz",
        'ǳ' => "dz",
        'Ǆ' => "DŽ",
        'ǅ' => "Dž",
        'ǆ' => "dž",
        'Ǉ' => "LJ",
        'ǈ' => "Lj",
        'ǉ' => "lj",
        'Ǌ' => "NJ",
        'ǋ' => "Nj",
        'ǌ' => "nj",
        'ﬀ' => "ff",
        'ﬁ' => "fi",
        'ﬂ' => "fl",
        'ﬃ' => "ffi",
        'ﬄ' => "ffl",
        'ﬅ' => "ſt",
        'ﬆ' => "st",
        _ => return None,
    })
}

fn fix_latin_ligatures(text: &str) -> String {
    let mut fixed = String::with_capacity(text.len());
    for character in text.chars() {
        match latin_ligature(character) {
            Some(letters) => fixed.push_str(letters),
            None => fixed.push(character),
        }
    }
    fixed
}

/// Full-width ASCII, half-width katakana/Hangul and the ideographic space,
/// replaced by their ordinary forms (their NFKC equivalents).
fn fix_character_width(text: &str) -> String {
    let mut fixed = String::with_capacity(text.len());
    for character in text.chars() {
        match character {
            '\u{3000}' => fixed.push(' '),
            '\u{ff01}'..='\u{ffef}' => fixed.extend(character.to_string().nfkc()),
            _ => fixed.push(character),
        }
    }
    fixed
}

fn uncurl_quotes(text: &str) -> String {
    text.chars()
        .map(|character| match character {
            '\u{2bc}' | '\u{2018}'..='\u{201b}' => '\'',
            '\u{201c}'..='\u{201f}' => '"',
            _ => character,
        })
        .collect()
}

fn fix_line_breaks(text: &str) -> String {
    text.replace("\r\n", "\n")
        .replace(['\r', '\u{2028}', '\u{2029}', '\u{85}'], "\n")
}

/// Removes ANSI terminal escapes such as colour codes.
fn remove_terminal_escapes(text: &str) -> String {
    static ANSI_ESCAPE: OnceLock<Regex> = OnceLock::new();
    ANSI_ESCAPE
        .get_or_init(|| Regex::new(r"\x1b\[(?:\d|;)*[a-zA-Z]").expect("ANSI pattern is valid"))
        .replace_all(text, "")
        .into_owned()
}

/// Control characters with no visible effect: C0 controls other than the
/// whitespace ones, DEL, deprecated Arabic format controls, the byte order
/// mark, interlinear annotation marks and the object replacement character.
fn is_invisible_control(character: char) -> bool {
    matches!(
        character,
        '\u{00}'..='\u{08}'
            | '\u{0b}'
            | '\u{0e}'..='\u{1f}'
            | '\u{7f}'
            | '\u{206a}'..='\u{206f}'
            | '\u{feff}'
            | '\u{fff9}'..='\u{fffc}'
    )
}

fn remove_control_chars(text: &str) -> String {
    text.chars().filter(|&c| !is_invisible_control(c)).collect()
}

/// Applies every fix to one segment until the text stops changing.
fn fix_segment(segment: &str, unescape_html: bool) -> String {
    let mut text = segment.to_string();
    loop {
        let original = text.clone();
        if unescape_html {
            text = unescape_strict(&text);
        }
        text = fix_encoding(&text);
        text = fix_c1_controls(&text);
        text = fix_latin_ligatures(&text);
        text = fix_character_width(&text);
        text = uncurl_quotes(&text);
        text = fix_line_breaks(&text);
        // (ftfy's surrogate repair has nothing to do: a Rust string cannot
        // hold unpaired surrogates.)
        text = remove_terminal_escapes(&text);
        text = remove_control_chars(&text);
        text = text.nfc().collect();
        if text == original {
            return text;
        }
    }
}

/// ftfy's `fix_text` with its default settings. Text is fixed line by line;
/// HTML references are decoded only until the first line holding a `<`
/// (from there on the text is taken to be real HTML, whose references must
/// stay).
pub(super) fn fix_text(text: &str) -> String {
    let mut fixed = String::with_capacity(text.len());
    let mut unescape_html = true;
    let mut rest = text;
    while !rest.is_empty() {
        let line_end = rest.find('\n').map_or(rest.len(), |at| at + 1);
        let segment_end = rest[..line_end]
            .char_indices()
            .nth(MAX_SEGMENT_CHARS)
            .map_or(line_end, |(at, _)| at.min(line_end));
        let (segment, remainder) = rest.split_at(segment_end);
        if segment.contains('<') {
            unescape_html = false;
        }
        fixed.push_str(&fix_segment(segment, unescape_html));
        rest = remainder;
    }
    fixed
}

/// Python's `" ".join(text.split())`: words separated by single spaces, no
/// leading or trailing whitespace.
pub(super) fn collapse_whitespace(text: &str) -> String {
    text.split(is_python_space)
        .filter(|word| !word.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// OpenCLIP's `basic_clean`: ftfy's fixes and two rounds of unescaping
/// (its final `strip` is left to the cleaning that follows, which drops
/// outer whitespace too).
fn basic_clean(text: &str) -> String {
    let fixed = fix_text(text);
    unescape_lenient(&unescape_lenient(&fixed))
}

/// OpenCLIP's `basic_clean` followed by `whitespace_clean`: the text a
/// tokenizer sees, before any lower-casing.
pub fn clean_caption(text: &str) -> String {
    collapse_whitespace(&basic_clean(text))
}

/// OpenCLIP's `canonicalize` cleaning (big_vision's `canonicalize_text`
/// after `basic_clean`): underscores become spaces, ASCII punctuation
/// (Python's `string.punctuation`) goes, the rest is lower-cased, and
/// whitespace collapses.
pub fn canonicalize_caption(text: &str) -> String {
    let without_punctuation: String = basic_clean(text)
        .replace('_', " ")
        .chars()
        .filter(|c| !c.is_ascii_punctuation())
        .collect();
    collapse_whitespace(&without_punctuation.to_lowercase())
}
