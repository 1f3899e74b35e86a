//! Mojibake detection and repair: text that was UTF-8 but got decoded with a
//! single-byte code page (`sÃ³` for `só`), re-encoded and decoded properly.
//!
//! This reproduces, decision for decision, the `fix_encoding` step of ftfy
//! 6.3 (Apache-2.0), which OpenCLIP runs on every caption: the same
//! "badness" heuristic that says whether text looks like mojibake, the same
//! code pages tried in the same order (with ftfy's "sloppy" variants that
//! map undefined bytes to Latin-1), the same repairs of bytes damaged on the
//! way (0xA0 turned into a space, bytes lost to U+FFFD), the same
//! CESU-8/Java-null UTF-8 variant, and the same piecewise fallback for text
//! that mixes encodings.

use std::collections::HashMap;
use std::sync::OnceLock;

use regex::bytes::Regex as BytesRegex;
use regex::Regex;

use super::charmaps;

// ---------------------------------------------------------------------------
// The badness heuristic: character classes of the ~400 characters that
// UTF-8 mojibake is made of, and sequences of them that real text rarely has.

const C1: &str = r"\x{80}-\x{9f}";
const COMMON: &str = "\u{a0}\u{ad}\u{b7}\u{b4}\u{2013}\u{2014}\u{2015}\u{2026}\u{2019}";
const BAD: &str = "\u{a6}\u{a4}\u{a8}\u{ac}\u{af}\u{b8}\u{192}\u{2c6}\u{2c7}\u{2d8}\u{2db}\
                   \u{2dc}\u{2020}\u{2021}\u{2030}\u{2310}\u{25ca}\u{fffd}\u{aa}\u{ba}";
const LAW: &str = "\u{b6}\u{a7}";
const CURRENCY: &str = "\u{a2}\u{a3}\u{a5}\u{20a7}\u{20ac}";
const START_PUNCTUATION: &str = "\u{a1}\u{ab}\u{bf}\u{a9}\u{384}\u{385}\u{2018}\u{201a}\
                                 \u{201c}\u{201e}\u{2022}\u{2039}\u{f8ff}";
const END_PUNCTUATION: &str = "\u{ae}\u{bb}\u{2dd}\u{201d}\u{203a}\u{2122}";
const NUMERIC: &str = "\u{b2}\u{b3}\u{b9}\u{b1}\u{bc}\u{bd}\u{be}\u{d7}\u{b5}\u{f7}\u{2044}\
                       \u{2202}\u{2206}\u{220f}\u{2211}\u{221a}\u{221e}\u{2229}\u{222b}\
                       \u{2248}\u{2260}\u{2261}\u{2264}\u{2265}\u{2116}";
const KAOMOJI: &str = "\u{d2}-\u{d6}\u{d9}-\u{dc}\u{f2}-\u{f6}\u{f8}-\u{fc}\u{150}\u{14c}\
                       \u{16a}\u{172}\u{b0}";
const UPPER_ACCENTED: &str = "\u{c0}-\u{d1}\u{d8}\u{dc}\u{dd}\u{102}\u{100}\u{104}\u{106}\
                              \u{10c}\u{10e}\u{110}\u{118}\u{11a}\u{112}\u{116}\u{11e}\u{122}\
                              \u{130}\u{12a}\u{136}\u{139}\u{13d}\u{141}\u{13b}\u{143}\u{147}\
                              \u{145}\u{152}\u{158}\u{15a}\u{15e}\u{160}\u{162}\u{164}\u{16e}\
                              \u{170}\u{178}\u{179}\u{17b}\u{17d}\u{490}";
const LOWER_ACCENTED: &str = "\u{df}\u{e0}-\u{f1}\u{103}\u{105}\u{101}\u{107}\u{10d}\u{10f}\
                              \u{111}\u{119}\u{11b}\u{113}\u{117}\u{11f}\u{123}\u{12f}\u{12b}\
                              \u{137}\u{13a}\u{13e}\u{142}\u{13c}\u{153}\u{155}\u{15b}\u{15f}\
                              \u{161}\u{165}\u{fc}\u{17a}\u{17c}\u{17e}\u{491}\u{fb01}\u{fb02}";
const UPPER_COMMON: &str = "\u{de}\u{391}-\u{3a9}\u{386}\u{388}\u{389}\u{38a}\u{38c}\u{38e}\
                            \u{38f}\u{3aa}\u{3ab}\u{401}-\u{42f}";
const LOWER_COMMON: &str = "\u{3b1}-\u{3c9}\u{3ac}\u{3ad}\u{3ae}\u{3af}\u{3b0}\u{430}-\u{45f}";
const BOX: &str = "\u{2502}\u{250c}\u{2510}\u{2518}\u{251c}\u{2524}\u{252c}\u{253c}\
                   \u{2550}-\u{256c}\u{2580}\u{2584}\u{2588}\u{258c}\u{2590}\u{2591}\u{2592}\
                   \u{2593}";
/// Python's `\s` (`str.isspace`), which differs from Unicode White_Space by
/// also holding the information separators U+1C..U+1F.
const PYTHON_SPACE: &str = r"\t\n\x0B\x0C\r\x1C-\x1F \x{85}\x{a0}\x{1680}\x{2000}-\x{200a}\x{2028}\x{2029}\x{202f}\x{205f}\x{3000}";
/// Python's `\w` (`str.isalnum` or `_`).
const PYTHON_WORD: &str = r"\p{L}\p{N}_";

/// The alternatives of the heuristic, each a sequence of character classes
/// (written with the category names above) that signals mojibake.
fn badness_pattern() -> String {
    let substitutions = [
        ("{c1}", C1),
        ("{common}", COMMON),
        ("{bad}", BAD),
        ("{law}", LAW),
        ("{currency}", CURRENCY),
        ("{start}", START_PUNCTUATION),
        ("{end}", END_PUNCTUATION),
        ("{numeric}", NUMERIC),
        ("{kaomoji}", KAOMOJI),
        ("{upper_accented}", UPPER_ACCENTED),
        ("{lower_accented}", LOWER_ACCENTED),
        ("{upper_common}", UPPER_COMMON),
        ("{lower_common}", LOWER_COMMON),
        ("{box}", BOX),
        ("{space}", PYTHON_SPACE),
        ("{word}", PYTHON_WORD),
    ];
    let alternatives = [
        "[{c1}]",
        "[{bad}{lower_accented}{upper_accented}{box}{start}{end}{currency}{numeric}{law}][{bad}]",
        "[a-zA-Z][{lower_common}{upper_common}][{bad}]",
        "[{bad}][{lower_accented}{upper_accented}{box}{start}{end}{currency}{numeric}{law}]",
        "[{lower_accented}{lower_common}{box}{end}{currency}{numeric}][{upper_accented}]",
        "[{box}{end}{currency}{numeric}][{lower_accented}]",
        "[{lower_accented}{box}{end}][{currency}]",
        "[{space}][{upper_accented}][{currency}]",
        "[{upper_accented}{box}][{numeric}{law}]",
        "[{lower_accented}{upper_accented}{box}{currency}{end}][{start}][{numeric}]",
        "[{lower_accented}{upper_accented}{currency}{numeric}{box}{law}][{end}][{start}]",
        "[{currency}{numeric}{box}][{start}]",
        "[a-z][{upper_accented}][{start}{currency}]",
        "[{box}][{kaomoji}]",
        "[{lower_accented}{upper_accented}{currency}{numeric}{start}{end}{law}][{box}]",
        "[{box}][{end}]",
        "[{lower_accented}{upper_accented}][{start}{end}][{word}]",
        "[Œœ][^A-Za-z]",
        "[{upper_accented}]°",
        "[ÂÃÎÐ][€œŠš¢£Ÿž\u{a0}\u{ad}®©°·»{start}{end}–—´]",
        "×[²³]",
        "[ØÙ][{common}{currency}{bad}{numeric}{start}ŸŠ®°µ»][ØÙ][{common}{currency}{bad}{numeric}{start}ŸŠ®°µ»]",
        "à[²µ¹¼½¾]",
        "√[±∂†≠®™´≤≥¥µø]",
        "≈[°¢]",
        "‚Ä[ìîïòôúùû†°¢π]",
        "‚[âó][àä°ê]",
        "вЂ",
        "[ВГРС][{c1}{bad}{start}{end}{currency}°µ][ВГРС]",
        "ГўВЂВ.[A-Za-z ]",
        "Ã[\u{a0}¡]",
        "[a-z][{space}]?[ÃÂ] ",
        "^[ÃÂ] ",
        "[a-z.,?!{end}]Â[ {start}{end}]",
        "β€[™\u{a0}Ά\u{ad}®°]",
        "[ΒΓΞΟ][{c1}{bad}{start}{end}{currency}°][ΒΓΞΟ]",
        "ā€",
    ];
    let mut pattern = alternatives.join("|");
    for (name, class) in substitutions {
        pattern = pattern.replace(name, class);
    }
    pattern
}

/// Whether `text` contains a character sequence typical of mojibake.
pub(super) fn is_bad(text: &str) -> bool {
    static BADNESS: OnceLock<Regex> = OnceLock::new();
    BADNESS
        .get_or_init(|| Regex::new(&badness_pattern()).expect("badness pattern is valid"))
        .is_match(text)
}

// ---------------------------------------------------------------------------
// Single-byte code pages.

/// A single-byte code page as mojibake repair uses it.
struct CodePage {
    /// The byte each decodable character encodes to.
    encoded: HashMap<char, u8>,
    /// ftfy's "sloppy" variant: undefined bytes decode as Latin-1 and byte
    /// 0x1A stands for U+FFFD.
    sloppy: bool,
    /// Mac Roman is exempt from the 0xA0-restoring repair (its 0xA0 is a
    /// dagger, so the repair would misfire on en dash + space).
    restores_byte_a0: bool,
}

impl CodePage {
    fn new(upper_half: &[u16; 128], sloppy: bool, restores_byte_a0: bool) -> CodePage {
        let mut decoded = ['\0'; 256];
        for (byte, slot) in decoded.iter_mut().enumerate() {
            *slot = if byte < 0x80 {
                byte as u8 as char
            } else {
                match upper_half[byte - 0x80] {
                    // Undefined: the sloppy variant passes the byte through.
                    0 => byte as u8 as char,
                    code => char::from_u32(u32::from(code)).unwrap_or('\u{fffd}'),
                }
            };
        }
        if sloppy {
            decoded[0x1a] = '\u{fffd}';
        }
        let encoded = decoded
            .iter()
            .enumerate()
            .map(|(byte, &character)| (character, byte as u8))
            .collect();
        CodePage {
            encoded,
            sloppy,
            restores_byte_a0,
        }
    }

    /// Encodes `text`, or `None` if some character has no byte here.
    fn encode(&self, text: &str) -> Option<Vec<u8>> {
        text.chars()
            .map(|character| self.encoded.get(&character).copied())
            .collect()
    }
}

/// The code pages to try, in ftfy's order of likelihood.
fn code_pages() -> &'static [CodePage] {
    static PAGES: OnceLock<Vec<CodePage>> = OnceLock::new();
    PAGES.get_or_init(|| {
        vec![
            CodePage::new(&charmaps::LATIN_1, false, true),
            CodePage::new(&charmaps::WINDOWS_1252, true, true),
            CodePage::new(&charmaps::WINDOWS_1251, true, true),
            CodePage::new(&charmaps::WINDOWS_1250, true, true),
            CodePage::new(&charmaps::WINDOWS_1253, true, true),
            CodePage::new(&charmaps::WINDOWS_1254, true, true),
            CodePage::new(&charmaps::WINDOWS_1257, true, true),
            CodePage::new(&charmaps::ISO_8859_2, false, true),
            CodePage::new(&charmaps::MAC_ROMAN, false, false),
            CodePage::new(&charmaps::CP437, false, true),
        ]
    })
}

/// Index of Latin-1 in [`code_pages`].
const LATIN_1_PAGE: usize = 0;

/// Strict Windows-1252 decoding (undefined bytes are an error).
fn decode_windows_1252_strict(bytes: &[u8]) -> Option<String> {
    bytes
        .iter()
        .map(|&byte| {
            if byte < 0x80 {
                Some(byte as char)
            } else {
                match charmaps::WINDOWS_1252[usize::from(byte - 0x80)] {
                    0 => None,
                    code => char::from_u32(u32::from(code)),
                }
            }
        })
        .collect()
}

/// What a C1 control character means when read as (sloppy) Windows-1252.
fn c1_as_windows_1252(character: char) -> char {
    let code = character as usize;
    match charmaps::WINDOWS_1252[code - 0x80] {
        0 => character,
        code => char::from_u32(u32::from(code)).unwrap_or(character),
    }
}

fn is_c1(character: char) -> bool {
    ('\u{80}'..='\u{9f}').contains(&character)
}

/// Reads C1 control characters as the Windows-1252 characters they
/// almost always were, as browsers do.
pub(super) fn fix_c1_controls(text: &str) -> String {
    text.chars()
        .map(|character| {
            if is_c1(character) {
                c1_as_windows_1252(character)
            } else {
                character
            }
        })
        .collect()
}

// ---------------------------------------------------------------------------
// Byte-level repairs before decoding as UTF-8.

/// UTF-8 sequences where a 0xA0 byte seems to have become a space.
fn altered_utf8() -> &'static BytesRegex {
    static ALTERED: OnceLock<BytesRegex> = OnceLock::new();
    ALTERED.get_or_init(|| {
        BytesRegex::new(
            r"(?-u)[\xC2\xC3\xC5\xCE\xD0\xD9] |[\xE2\xE3] [\x80-\x84\x86-\x9F\xA1-\xBF]|[\xE0-\xE3][\x80-\x84\x86-\x9F\xA1-\xBF] |\xF0 [\x80-\xBF][\x80-\xBF]|\xF0[\x80-\xBF] [\x80-\xBF]|\xF0[\x80-\xBF][\x80-\xBF] ",
        )
        .expect("altered UTF-8 pattern is valid")
    })
}

/// Puts back 0xA0 bytes that became spaces: first in "Ã " (`à` followed by
/// a space, except in Portuguese words where `à` is a whole word), then in
/// every sequence that would be UTF-8 with the 0xA0 restored.
fn restore_byte_a0(bytes: &[u8]) -> Vec<u8> {
    const WORDS_AFTER_A_GRAVE: [&[u8]; 5] = [b" ", b"quele", b"quela", b"quilo", b"s "];
    let mut restored = Vec::with_capacity(bytes.len() + 8);
    let mut at = 0;
    while at < bytes.len() {
        if bytes[at..].starts_with(b"\xC3 ") {
            let after = &bytes[at + 2..];
            if !WORDS_AFTER_A_GRAVE
                .iter()
                .any(|word| after.starts_with(word))
            {
                restored.extend_from_slice(b"\xC3\xA0 ");
                at += 2;
                continue;
            }
        }
        restored.push(bytes[at]);
        at += 1;
    }
    altered_utf8()
        .replace_all(&restored, |captures: &regex::bytes::Captures| {
            captures[0]
                .iter()
                .map(|&byte| if byte == b' ' { 0xA0 } else { byte })
                .collect::<Vec<u8>>()
        })
        .into_owned()
}

/// Replaces UTF-8 sequences whose continuation bytes were lost (byte 0x1A,
/// which sloppy code pages use for U+FFFD, or `?`) with the UTF-8 of U+FFFD.
fn replace_lossy_sequences(bytes: &[u8]) -> Vec<u8> {
    static LOSSY: OnceLock<BytesRegex> = OnceLock::new();
    let lossy = LOSSY.get_or_init(|| {
        BytesRegex::new(
            r"(?-u)[\xC2-\xDF]\x1A|[\xC2-\xC3]\?|\xED[\xA0-\xAF][\x1A?]\xED[\xB0-\xBF][\x1A?\x80-\xBF]|\xED[\xA0-\xAF][\x1A?\x80-\xBF]\xED[\xB0-\xBF][\x1A?]|[\xE0-\xEF][\x1A?][\x1A\x80-\xBF]|[\xE0-\xEF][\x1A\x80-\xBF][\x1A?]|[\xF0-\xF4][\x1A?][\x1A\x80-\xBF][\x1A\x80-\xBF]|[\xF0-\xF4][\x1A\x80-\xBF][\x1A?][\x1A\x80-\xBF]|[\xF0-\xF4][\x1A\x80-\xBF][\x1A\x80-\xBF][\x1A?]|\x1A",
        )
        .expect("lossy UTF-8 pattern is valid")
    });
    lossy.replace_all(bytes, "\u{fffd}".as_bytes()).into_owned()
}

/// Decodes UTF-8 that may also hold the variants other software writes:
/// Java's two-byte NUL (C0 80) and CESU-8 surrogate pairs (six bytes for one
/// supplementary character). Anything else must be strict UTF-8.
fn decode_utf8_variants(bytes: &[u8]) -> Option<String> {
    let is_cesu8_pair = |at: usize| {
        bytes.len() >= at + 6
            && bytes[at] == 0xED
            && (0xA0..=0xAF).contains(&bytes[at + 1])
            && (0x80..=0xBF).contains(&bytes[at + 2])
            && bytes[at + 3] == 0xED
            && (0xB0..=0xBF).contains(&bytes[at + 4])
            && (0x80..=0xBF).contains(&bytes[at + 5])
    };
    let mut decoded = String::with_capacity(bytes.len());
    let mut plain_start = 0;
    let mut at = 0;
    while at < bytes.len() {
        let (special, length) = if bytes[at..].starts_with(b"\xC0\x80") {
            ('\0', 2)
        } else if is_cesu8_pair(at) {
            let code = ((u32::from(bytes[at + 1]) & 0x0F) << 16)
                + ((u32::from(bytes[at + 2]) & 0x3F) << 10)
                + ((u32::from(bytes[at + 4]) & 0x0F) << 6)
                + (u32::from(bytes[at + 5]) & 0x3F)
                + 0x10000;
            (char::from_u32(code)?, 6)
        } else {
            at += 1;
            continue;
        };
        decoded.push_str(std::str::from_utf8(&bytes[plain_start..at]).ok()?);
        decoded.push(special);
        at += length;
        plain_start = at;
    }
    decoded.push_str(std::str::from_utf8(&bytes[plain_start..]).ok()?);
    Some(decoded)
}

// ---------------------------------------------------------------------------
// Mojibake embedded in otherwise fine text.

/// Characters that may start a 2-, 3- or 4-byte UTF-8 sequence once misread
/// by one of the code pages, and those that may continue one.
const FIRST_OF_2: &str = "\u{102}\u{c2}\u{c4}\u{100}\u{c5}\u{c3}\u{c6}\u{106}\u{10c}\u{c7}\
                          \u{10e}\u{110}\u{c9}\u{11a}\u{ca}\u{cb}\u{116}\u{c8}\u{112}\u{118}\
                          \u{d0}\u{11e}\u{122}\u{cd}\u{ce}\u{cf}\u{130}\u{cc}\u{12a}\u{136}\
                          \u{139}\u{13b}\u{141}\u{143}\u{147}\u{145}\u{d1}\u{d3}\u{d4}\u{d6}\
                          \u{150}\u{d2}\u{14c}\u{d8}\u{d5}\u{158}\u{15a}\u{160}\u{15e}\u{162}\
                          \u{de}\u{da}\u{db}\u{dc}\u{170}\u{d9}\u{16a}\u{172}\u{16e}\u{dd}\
                          \u{179}\u{17d}\u{17b}\u{df}\u{d7}\u{392}-\u{3a1}\u{3a3}-\u{3ab}\
                          \u{3ac}-\u{3af}\u{412}-\u{42f}";
const FIRST_OF_3: &str = "\u{e1}\u{103}\u{e2}\u{e4}\u{e0}\u{101}\u{105}\u{e5}\u{e3}\u{e6}\
                          \u{107}\u{10d}\u{e7}\u{10f}\u{e9}\u{11b}\u{ea}\u{eb}\u{117}\u{e8}\
                          \u{113}\u{119}\u{123}\u{ed}\u{ee}\u{ef}\u{ec}\u{12b}\u{12f}\u{137}\
                          \u{13a}\u{13c}\u{155}\u{17a}\u{3b0}\u{3b1}-\u{3bf}\u{430}-\u{43f}";
const FIRST_OF_4: &str = "\u{111}\u{f0}\u{11f}\u{f3}\u{161}\u{3c0}\u{3c3}\u{440}\u{443}";
/// Continuation characters that are never plausible right before mojibake.
const CONTINUATION_STRICT: &str = "\u{80}-\u{bf}\u{104}\u{c6}\u{13d}\u{141}\u{d8}\u{156}\u{15a}\
                                   \u{160}\u{15e}\u{164}\u{178}\u{179}\u{17d}\u{17b}\u{152}\u{105}\
                                   \u{e6}\u{192}\u{13e}\u{142}\u{f8}\u{157}\u{15b}\u{161}\u{15f}\
                                   \u{165}\u{17a}\u{17e}\u{17c}\u{153}\u{2c6}\u{2c7}\u{2d8}\u{2db}\
                                   \u{2dc}\u{2dd}\u{384}\u{385}\u{386}\u{388}\u{389}\u{38a}\u{38c}\
                                   \u{38e}\u{38f}\u{401}\u{402}\u{403}\u{404}\u{405}\u{406}\u{407}\
                                   \u{408}\u{409}\u{40a}\u{40b}\u{40c}\u{40e}\u{40f}\u{451}\u{452}\
                                   \u{453}\u{454}\u{455}\u{456}\u{457}\u{458}\u{459}\u{45a}\u{45b}\
                                   \u{45c}\u{45e}\u{45f}\u{490}\u{491}\u{2020}\u{2021}\u{2030}\
                                   \u{2039}\u{203a}\u{20ac}\u{2116}\u{2122}";
/// The looser continuation set also admits a space (for a lost 0xA0) and
/// punctuation that Windows-1252 puts at continuation bytes.
const CONTINUATION_EXTRA: &str = " \u{2013}\u{2014}\u{2015}\u{2018}\u{2019}\u{201a}\u{201c}\
                                  \u{201d}\u{201e}\u{2022}\u{2026}";

fn utf8_detector() -> &'static Regex {
    static DETECTOR: OnceLock<Regex> = OnceLock::new();
    DETECTOR.get_or_init(|| {
        let continuation = format!("[{CONTINUATION_STRICT}{CONTINUATION_EXTRA}]");
        let pattern = format!(
            "(?:[{FIRST_OF_2}]{continuation}|[{FIRST_OF_3}]{continuation}{{2}}|[{FIRST_OF_4}]{continuation}{{3}})+"
        );
        Regex::new(&pattern).expect("UTF-8 detector pattern is valid")
    })
}

/// Whether `character` may not directly precede a run of embedded mojibake.
fn is_strict_continuation(character: char) -> bool {
    static STRICT: OnceLock<Regex> = OnceLock::new();
    let strict = STRICT.get_or_init(|| {
        Regex::new(&format!("^[{CONTINUATION_STRICT}]$")).expect("continuation pattern is valid")
    });
    let mut buffer = [0u8; 4];
    strict.is_match(character.encode_utf8(&mut buffer))
}

/// The runs of likely UTF-8 mojibake in `text`, as byte ranges, that are not
/// preceded by a continuation character (they would be a fragment of a
/// longer run).
fn utf8_mojibake_runs(text: &str) -> Vec<(usize, usize)> {
    let detector = utf8_detector();
    let mut runs = Vec::new();
    let mut search_from = 0;
    while let Some(found) = detector.find_at(text, search_from) {
        let preceded_by_continuation = text[..found.start()]
            .chars()
            .next_back()
            .is_some_and(is_strict_continuation);
        if preceded_by_continuation {
            let next_char = text[found.start()..]
                .chars()
                .next()
                .map_or(1, char::len_utf8);
            search_from = found.start() + next_char;
        } else {
            runs.push((found.start(), found.end()));
            search_from = found.end();
        }
    }
    runs
}

/// Fixes mojibake runs one by one, for text whose parts were mangled
/// differently (so no single re-encoding fixes the whole).
fn decode_inconsistent_utf8(text: &str) -> String {
    let text_chars = text.chars().count();
    let mut fixed = String::with_capacity(text.len());
    let mut copied_up_to = 0;
    for (start, end) in utf8_mojibake_runs(text) {
        let run = &text[start..end];
        fixed.push_str(&text[copied_up_to..start]);
        if run.chars().count() < text_chars && is_bad(run) {
            fixed.push_str(&fix_encoding(run));
        } else {
            fixed.push_str(run);
        }
        copied_up_to = end;
    }
    fixed.push_str(&text[copied_up_to..]);
    fixed
}

// ---------------------------------------------------------------------------
// The repair loop.

/// One round of repair; returns the text unchanged when it sees nothing to do.
fn fix_encoding_step(text: &str) -> String {
    if text.is_ascii() || !is_bad(text) {
        return text.to_string();
    }
    let pages = code_pages();
    let mut possible_pages = Vec::new();
    for (index, page) in pages.iter().enumerate() {
        let Some(mut bytes) = page.encode(text) else {
            continue;
        };
        possible_pages.push(index);
        if page.restores_byte_a0 && altered_utf8().is_match(&bytes) {
            bytes = restore_byte_a0(&bytes);
        }
        if page.sloppy {
            bytes = replace_lossy_sequences(&bytes);
        }
        let decoded = if bytes.contains(&0xED) || bytes.contains(&0xC0) {
            decode_utf8_variants(&bytes)
        } else {
            String::from_utf8(bytes).ok()
        };
        if let Some(decoded) = decoded {
            return decoded;
        }
    }
    if !utf8_mojibake_runs(text).is_empty() {
        let fixed = decode_inconsistent_utf8(text);
        if fixed != text {
            return fixed;
        }
    }
    if possible_pages.contains(&LATIN_1_PAGE) {
        // Latin-1 text with C1 controls: almost surely meant as Windows-1252.
        let latin_1: Vec<u8> = text.chars().map(|character| character as u8).collect();
        if let Some(fixed) = decode_windows_1252_strict(&latin_1) {
            if fixed != text {
                return fixed;
            }
        }
    }
    if text.chars().any(is_c1) {
        return fix_c1_controls(text);
    }
    text.to_string()
}

/// Repairs mojibake in `text` until a round changes nothing.
pub(super) fn fix_encoding(text: &str) -> String {
    let mut text = text.to_string();
    loop {
        let fixed = fix_encoding_step(&text);
        if fixed == text {
            return text;
        }
        text = fixed;
    }
}
