//! Tokenizer parity: clipflow's CLIP tokenizer must give exactly the ids of
//! `open_clip.tokenize` (the oracle) on a large, deliberately nasty caption
//! corpus; and the HuggingFace tokenizer.json wrapper must truncate and pad
//! like OpenCLIP's `HFTokenizer`.
//!
//! Token ids are integers: the comparison is exact, no tolerance.

mod common;

use std::io::Write;

use clipflow_core::tokenizer::{tokenize_batch, ClipTokenizer, HfTokenizer, TextTokenizer};

/// Captions generated per family below; ~5,600 in all.
const CAPTIONS_PER_FAMILY: usize = 400;

/// Deterministic xorshift generator so the corpus is the same on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }
    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }
}

const ENGLISH: &[&str] = &[
    "a",
    "photo",
    "of",
    "the",
    "cat",
    "dog",
    "sitting",
    "on",
    "red",
    "couch",
    "in",
    "park",
    "Beautiful",
    "SUNSET",
    "over",
    "mountains",
    "with",
    "people",
    "walking",
    "don't",
    "it's",
    "we're",
    "they've",
    "I'm",
    "you'll",
    "he'd",
    "OpenCLIP",
    "ViT-B/32",
    "3D",
    "render",
    "HDR",
    "#nofilter",
    "@user",
    "https://example.com/a_b?c=d&e=f",
    "e-mail",
    "well-known",
    "co-op",
    "rock'n'roll",
    "O'Brien",
    "1,000",
    "3.14159",
    "2nd",
    "42",
    "1990s",
    "$19.99",
    "50%",
    "C++",
    "naïve",
    "café",
    "résumé",
    "jalapeño",
    "Straße",
    "Ørsted",
    "Øresund",
];

const SCRIPTS: &[&str] = &[
    "Ελληνικά γράμματα",
    "ΟΔΟΣ ΣΟΦΟΚΛΕΟΥΣ",
    "Русский текст",
    "ПРИВЕТ МИР",
    "Українська мова",
    "עברית",
    "العربية لغة جميلة",
    "हिन्दी भाषा",
    "বাংলা",
    "ภาษาไทย",
    "中文字符测试",
    "日本語のテキスト",
    "カタカナ",
    "ひらがな",
    "한국어 텍스트",
    "ქართული",
    "Հայերեն",
    "Türkçe İstanbul ılık",
    "Tiếng Việt có dấu",
    "Polski: zażółć gęślą jaźń",
    "Čeština: příliš žluťoučký kůň",
    "Íslenska þorn ðeth",
    "Ἀθῆναι",
    "ᾳ ᾼ",
    "ﬅ ſ 'ſ",
    "K Å Ω",
    "ǅ ǈ ǋ Ǳ",
    "ß ẞ",
    "ŉ ĳ Ĳ",
    "e\u{301} a\u{308} o\u{302}\u{323}",
    "\u{1100}\u{1161}\u{11a8}",
    "a\u{345}b",
    "Ⅻ ⅻ ① ½ ² ³ ٣ ५ ๓",
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝐁𝐨𝐥𝐝",
    "Ⓐⓑⓒ",
    "ꙮ",
    "ᏣᎳᎩ",
];

const EMOJI: &[&str] = &[
    "😀",
    "🐱",
    "👍🏽",
    "👨‍👩‍👧‍👦",
    "🇫🇷",
    "🏳️‍🌈",
    "❤️",
    "✔",
    "☃",
    "🎉🎉",
    "🤖",
    "👩🏻‍💻",
    "🏴\u{e0067}\u{e0062}\u{e0077}\u{e006c}\u{e0073}\u{e007f}",
    "©",
    "®",
    "™",
    "→",
    "∞",
    "€",
];

const HTML: &[&str] = &[
    "&amp;",
    "&lt;",
    "&gt;",
    "&quot;",
    "&#39;",
    "&#x27;",
    "&nbsp;",
    "&amp;amp;",
    "&amp;lt;",
    "&amp;#39;",
    "&eacute;",
    "&EACUTE;",
    "&Eacute;",
    "&ntilde;",
    "&NTILDE;",
    "&nTILDE;",
    "&hellip;",
    "&mdash;",
    "&copy;",
    "&copy",
    "&copy2023",
    "&not that",
    "&notit;",
    "&ampfoo",
    "&#128;",
    "&#x80;",
    "&#0;",
    "&#x110000;",
    "&#55296;",
    "&#x1F600;",
    "&#1234567890123;",
    "&#65abc;",
    "&#xZZ;",
    "&unknown;",
    "&SZLIG;",
    "&szlig;",
    "&#x9F;",
    "&#x81;",
    "&#11;",
    "&#65279;",
    "&;",
    "& amp;",
    "&&amp;",
    "&amp",
    "&LT",
    "&lt",
    "&#97",
    "&#x62",
];

const MOJIBAKE: &[&str] = &[
    "sÃ³",
    "voilÃ le travail",
    "Ã  la carte",
    "Ã quele",
    "âœ” No problems",
    "&macr;\\_(ã\u{83}\u{84})_/&macr;",
    "â€œquotedâ€\u{9d}",
    "â€œ like this â€\u{fffd}",
    "Ã©tÃ©",
    "cafÃ©",
    "EspaÃ±a",
    "MÃ¼nchen",
    "Ãœber",
    "Ã¼ber",
    "ðŸ˜€",
    "ðŸ‘\u{8d}",
    "Ð”Ð¾Ð±Ñ€Ð¾",
    "Р”РѕР±СЂРѕ РїРѕР¶Р°Р»РѕРІР°С‚СЊ",
    "РџСЂРёРІРµС‚",
    "Ã¢â‚¬â„¢",
    "itâ€™s",
    "Iâ€™m",
    "â€”",
    "â€¦",
    "Ã‰",
    "Ã\u{a0}",
    "Â£100",
    "Â\u{a0}",
    "Â ",
    "Ã ",
    "Ã\u{83}Â©",
    "\u{80}\u{93}\u{94}",
    "\u{85}",
    "\u{81}\u{8d}",
    "Ã¡Ã©Ã\u{ad}Ã³Ãº",
    "ÐšÐ¸Ñ\u{80}Ð¸Ð»Ð»Ð¸Ñ†Ð°",
    "Ã\u{83}Ã\u{82}",
    "×²",
    "Ø¨Ø§Ù„Ø¹Ø±Ø¨ÙŠØ©",
    "ã‚«ã‚¿ã‚«ãƒŠ",
    "ä¸\u{ad}æ–‡",
    "â€˜singleâ€™",
    "Â¿QuÃ©?",
    "Â¡Hola!",
    "â„¢",
    "Ã§",
    "Ä\u{8d}",
    "Å¾",
    "â”‚â”Œ",
    "Î±Î²Î³",
    "ƒ",
    "Ã¶Ã¤Ã¼",
    "\u{c3}\u{a9} mixed é",
];

const QUOTES_AND_WIDTH: &[&str] = &[
    "‘single’",
    "“double”",
    "„low“",
    "‹angle›",
    "«guillemets»",
    "ʼapostrophe",
    "‛reversed‟",
    "ＬＯＵＤ　ＮＯＩＳＥＳ",
    "ｆｕｌｌｗｉｄｔｈ１２３",
    "ｶﾀｶﾅ",
    "ﾊﾝｶｸ",
    "ﾡﾢ",
    "！？",
    "＄１００",
    "ﬁne ﬂour ﬀ ﬃ ﬄ",
    "ﬆop",
    "\u{3000}ideographic\u{3000}space",
];

const CONTROLS: &[&str] = &[
    "\u{0}",
    "\u{1}",
    "\u{7}",
    "\u{8}",
    "\t",
    "\n",
    "\u{b}",
    "\u{c}",
    "\r",
    "\r\n",
    "\u{1b}",
    "\u{1b}[31m",
    "\u{1b}[0m",
    "\u{1b}[1;32;44m",
    "\u{1c}",
    "\u{1f}",
    "\u{7f}",
    "\u{85}",
    "\u{a0}",
    "\u{ad}",
    "\u{200b}",
    "\u{200c}",
    "\u{200d}",
    "\u{200e}",
    "\u{202e}",
    "\u{2028}",
    "\u{2029}",
    "\u{2060}",
    "\u{206a}",
    "\u{feff}",
    "\u{fff9}",
    "\u{fffc}",
    "\u{fffd}",
    "\u{1680}",
    "\u{2003}",
    "\u{202f}",
    "\u{205f}",
    "\u{180e}",
    "\u{e000}",
    "\u{f8ff}",
];

const PUNCTUATION: &[&str] = &[
    "!",
    "?",
    "...",
    "!!!???",
    ",",
    ";",
    ":",
    "-",
    "--",
    "—",
    "(",
    ")",
    "[",
    "]",
    "{",
    "}",
    "'",
    "''",
    "\"",
    "`",
    "~",
    "^",
    "*",
    "_",
    "__init__",
    "\\",
    "/",
    "|",
    "<",
    ">",
    "<3",
    "</w>",
    "<start_of_text>",
    "<end_of_text>",
    "<START_OF_TEXT>",
    "<|endoftext|>",
    "<b>bold</b>",
    "'s",
    "'S",
    "'t",
    "'re",
    "'ve",
    "'m",
    "'ll",
    "'d",
    "'",
    "12",
    "007",
    "3.0",
    "1e-5",
    "0x1F",
    "+-",
    "±",
    "°C",
    "µm",
    "№5",
    "§",
    "¶",
];

/// A caption assembled from `parts` (some separated by spaces, some glued).
fn glue(rng: &mut Rng, parts: &[&[&str]], count: usize) -> String {
    let mut caption = String::new();
    for _ in 0..count {
        let family = parts[rng.below(parts.len())];
        if !caption.is_empty() && rng.chance(70) {
            caption.push(' ');
        }
        caption.push_str(rng.pick(family));
    }
    caption
}

/// UTF-8 bytes read back as Latin-1, or as Windows-1252 where it differs.
fn as_mojibake(text: &str, windows_1252: bool) -> String {
    const C1_AS_1252: [char; 32] = [
        '€', '\u{81}', '‚', 'ƒ', '„', '…', '†', '‡', 'ˆ', '‰', 'Š', '‹', 'Œ', '\u{8d}', 'Ž',
        '\u{8f}', '\u{90}', '‘', '’', '“', '”', '•', '–', '—', '˜', '™', 'š', '›', 'œ', '\u{9d}',
        'ž', 'Ÿ',
    ];
    text.bytes()
        .map(|byte| match byte {
            0x80..=0x9f if windows_1252 => C1_AS_1252[usize::from(byte - 0x80)],
            _ => char::from(byte),
        })
        .collect()
}

/// A random mix of code points from many assigned blocks.
fn code_point_soup(rng: &mut Rng) -> String {
    const RANGES: &[(u32, u32)] = &[
        (0x20, 0x7e),
        (0xa0, 0x24f),
        (0x370, 0x3ff),
        (0x400, 0x4ff),
        (0x590, 0x5ff),
        (0x600, 0x6ff),
        (0x900, 0x97f),
        (0xe00, 0xe7f),
        (0x1e00, 0x1fff),
        (0x2000, 0x206f),
        (0x2100, 0x22ff),
        (0x2500, 0x25ff),
        (0x3000, 0x30ff),
        (0x4e00, 0x4fff),
        (0xac00, 0xacff),
        (0xfb00, 0xfb4f),
        (0xff00, 0xffef),
        (0x1f300, 0x1f64f),
    ];
    let length = 1 + rng.below(24);
    (0..length)
        .filter_map(|_| {
            let (low, high) = RANGES[rng.below(RANGES.len())];
            char::from_u32(low + rng.below((high - low + 1) as usize) as u32)
        })
        .collect()
}

/// The parity corpus: fixed edge cases plus seeded random families.
fn caption_corpus() -> Vec<String> {
    let mut captions: Vec<String> = [
        "",
        " ",
        "   ",
        "\t",
        "\n",
        "\n\n",
        " \t\r\n ",
        "\u{3000}",
        "\u{a0}",
        "\u{85}",
        "a",
        "A",
        "<",
        "&",
        "&amp;",
        "&amp;amp;amp;",
        "line one\nline <two>\n&amp; three",
        "&amp; first\n< second\n&amp; third",
        "Ã©\nÃ©",
        "x&lt;y\nÃ© &eacute;",
    ]
    .iter()
    .map(|caption| caption.to_string())
    .collect();
    captions.extend(
        ENGLISH
            .iter()
            .chain(SCRIPTS)
            .chain(EMOJI)
            .chain(HTML)
            .map(|s| s.to_string()),
    );
    captions.extend(
        MOJIBAKE
            .iter()
            .chain(QUOTES_AND_WIDTH)
            .chain(CONTROLS)
            .map(|s| s.to_string()),
    );
    captions.extend(PUNCTUATION.iter().map(|s| s.to_string()));

    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let everything: &[&[&str]] = &[
        ENGLISH,
        SCRIPTS,
        EMOJI,
        HTML,
        MOJIBAKE,
        QUOTES_AND_WIDTH,
        CONTROLS,
        PUNCTUATION,
    ];
    for _ in 0..CAPTIONS_PER_FAMILY {
        let count = 3 + rng.below(12);
        captions.push(glue(&mut rng, &[ENGLISH], count));
        captions.push(glue(&mut rng, &[ENGLISH, SCRIPTS, EMOJI], count));
        captions.push(glue(&mut rng, &[ENGLISH, HTML], count));
        captions.push(glue(&mut rng, &[ENGLISH, MOJIBAKE], count));
        captions.push(glue(
            &mut rng,
            &[ENGLISH, QUOTES_AND_WIDTH, PUNCTUATION],
            count,
        ));
        captions.push(glue(&mut rng, &[ENGLISH, CONTROLS], count));
        captions.push(glue(&mut rng, everything, count));
        // Mojibake made from correct text, whole or in part, sometimes lossy.
        let correct = glue(
            &mut rng,
            &[ENGLISH, SCRIPTS, EMOJI, QUOTES_AND_WIDTH],
            count,
        );
        let mangled = as_mojibake(&correct, rng.chance(50));
        let mangled = if rng.chance(20) {
            mangled.replacen(|c: char| ('\u{80}'..='\u{bf}').contains(&c), "\u{fffd}", 1)
        } else if rng.chance(20) {
            mangled.replace('\u{a0}', " ")
        } else {
            mangled
        };
        captions.push(if rng.chance(30) {
            format!("{correct} {mangled}")
        } else {
            mangled
        });
        captions.push(code_point_soup(&mut rng));
        // Doubly escaped HTML.
        let escaped = glue(&mut rng, &[ENGLISH, HTML], count).replace('&', "&amp;");
        captions.push(if rng.chance(50) {
            escaped.replace('&', "&amp;")
        } else {
            escaped
        });
        // Case and spacing noise.
        let noisy: String = glue(&mut rng, &[ENGLISH, SCRIPTS, PUNCTUATION], count)
            .chars()
            .map(|c| {
                if rng.chance(20) {
                    c.to_uppercase().next().unwrap_or(c)
                } else {
                    c
                }
            })
            .collect();
        captions.push(noisy.replace(' ', if rng.chance(50) { "  \t" } else { " " }));
        // Long captions, truncated at the context length.
        let long_count = 60 + rng.below(120);
        captions.push(glue(
            &mut rng,
            &[ENGLISH, SCRIPTS, PUNCTUATION, EMOJI],
            long_count,
        ));
        // Multi-line captions, with and without `<` (which stops ftfy's
        // entity decoding from that line on).
        let lines: Vec<String> = (0..1 + rng.below(4))
            .map(|_| glue(&mut rng, &[ENGLISH, HTML, MOJIBAKE, PUNCTUATION], 4))
            .collect();
        captions.push(lines.join(if rng.chance(50) { "\n" } else { "\r\n" }));
        // Numbers and punctuation only.
        captions.push(glue(&mut rng, &[PUNCTUATION], count));
    }
    captions
}

/// Runs `open_clip.tokenize` on every caption of a JSON-lines file for each
/// context length; prints one JSON list of id rows per context length.
const ORACLE_SCRIPT: &str = r#"
import json, sys
import open_clip
path, lengths = sys.argv[1], [int(n) for n in sys.argv[2].split(",")]
with open(path, encoding="utf-8") as f:
    captions = [json.loads(line) for line in f]
for length in lengths:
    print(json.dumps(open_clip.tokenize(captions, context_length=length).tolist()))
"#;

/// The oracle's ids for `captions` at each context length.
fn oracle_ids(captions: &[String], context_lengths: &[usize]) -> Vec<Vec<Vec<i64>>> {
    let mut file = tempfile::NamedTempFile::new().expect("creating the corpus file");
    for caption in captions {
        writeln!(
            file,
            "{}",
            serde_json::to_string(caption).expect("caption as JSON")
        )
        .expect("writing the corpus file");
    }
    file.flush().expect("writing the corpus file");
    let lengths: Vec<String> = context_lengths.iter().map(usize::to_string).collect();
    let path = file.path().to_str().expect("temp path is UTF-8");
    let stdout = common::run_oracle(ORACLE_SCRIPT, &[path, &lengths.join(",")]);
    stdout
        .lines()
        .map(|line| serde_json::from_str(line).expect("oracle output is JSON"))
        .collect()
}

/// Asserts identical rows, printing the first few mismatching captions.
fn assert_same_ids(
    captions: &[String],
    ours: &[Vec<i64>],
    oracle: &[Vec<i64>],
    context_length: usize,
) {
    assert_eq!(ours.len(), oracle.len());
    let mismatches: Vec<usize> = (0..captions.len())
        .filter(|&i| ours[i] != oracle[i])
        .collect();
    for &index in mismatches.iter().take(8) {
        eprintln!(
            "context {context_length}, caption #{index} {:?}\n  clipflow: {:?}\n  OpenCLIP: {:?}",
            captions[index], ours[index], oracle[index]
        );
    }
    assert!(
        mismatches.is_empty(),
        "{} of {} captions tokenize differently from OpenCLIP's tokenizer at context length {context_length}",
        mismatches.len(),
        captions.len()
    );
}

#[test]
fn clip_tokenizer_matches_open_clip_tokenize() {
    let captions = caption_corpus();
    assert!(
        captions.len() >= 5000,
        "corpus has only {} captions",
        captions.len()
    );
    let tokenizer = ClipTokenizer::new().expect("loading OpenCLIP's BPE vocabulary");
    assert_eq!(tokenizer.vocab_size(), 49408);

    // Context 77 on the whole corpus; other lengths on a slice of it.
    let short_lengths = [1, 2, 16, 100];
    let slice = &captions[..600];
    let oracle = oracle_ids(&captions, &[77]);
    let oracle_short = oracle_ids(slice, &short_lengths);

    let ours: Vec<Vec<i64>> = captions.iter().map(|c| tokenizer.encode(c, 77)).collect();
    assert_same_ids(&captions, &ours, &oracle[0], 77);
    for (length, oracle_rows) in short_lengths.iter().zip(&oracle_short) {
        let ours: Vec<Vec<i64>> = slice.iter().map(|c| tokenizer.encode(c, *length)).collect();
        assert_same_ids(slice, &ours, oracle_rows, *length);
    }

    // The batch tensor holds the same rows.
    let batch = tokenize_batch(&tokenizer, &captions[..8], 77);
    assert_eq!(batch.size(), [8, 77]);
    assert_eq!(batch.kind(), tch::Kind::Int64);
    let flat: Vec<i64> = Vec::try_from(batch.flatten(0, -1)).expect("tensor to vec");
    assert_eq!(flat, oracle[0][..8].concat());
}

/// A tiny WordLevel tokenizer.json: case-sensitive words, `[CLS] … [SEP]`.
const TINY_TOKENIZER_JSON: &str = r#"{
  "version": "1.0",
  "truncation": null,
  "padding": null,
  "added_tokens": [
    {"id": 0, "content": "[PAD]", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true},
    {"id": 1, "content": "[CLS]", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true},
    {"id": 2, "content": "[SEP]", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}
  ],
  "normalizer": null,
  "pre_tokenizer": {"type": "Whitespace"},
  "post_processor": {
    "type": "TemplateProcessing",
    "single": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}, {"SpecialToken": {"id": "[SEP]", "type_id": 0}}],
    "pair": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}, {"SpecialToken": {"id": "[SEP]", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}, {"SpecialToken": {"id": "[SEP]", "type_id": 1}}],
    "special_tokens": {
      "[CLS]": {"id": "[CLS]", "ids": [1], "tokens": ["[CLS]"]},
      "[SEP]": {"id": "[SEP]", "ids": [2], "tokens": ["[SEP]"]}
    }
  },
  "decoder": null,
  "model": {
    "type": "WordLevel",
    "vocab": {"[PAD]": 0, "[CLS]": 1, "[SEP]": 2, "[UNK]": 3, "a": 4, "photo": 5, "of": 6, "cat": 7, ".": 8, "Cat": 9, "&": 10},
    "unk_token": "[UNK]"
  }
}"#;

#[test]
fn hf_tokenizer_cleans_truncates_and_pads_like_open_clip() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("tokenizer.json");
    std::fs::write(&path, TINY_TOKENIZER_JSON).expect("writing tokenizer.json");
    let tokenizer =
        HfTokenizer::from_file(&path, Default::default()).expect("loading tokenizer.json");

    // Whitespace-cleaned and HTML-unescaped, but not lower-cased: "A" is unknown.
    let caption = "  A photo\tof &amp;  a Cat. ";
    assert_eq!(tokenizer.encode(caption, 9), [1, 3, 5, 6, 10, 4, 9, 8, 2]);
    // Truncation keeps room for the closing special token.
    assert_eq!(tokenizer.encode(caption, 5), [1, 3, 5, 6, 2]);
    // Padding with the [PAD] token.
    assert_eq!(tokenizer.encode("a cat", 6), [1, 4, 7, 2, 0, 0]);
    let batch = tokenize_batch(&tokenizer, &["a cat", "photo"], 4);
    assert_eq!(batch.size(), [2, 4]);

    let missing = dir.path().join("missing.json");
    let error = HfTokenizer::from_file(&missing, Default::default())
        .err()
        .expect("a missing file is an error");
    assert!(format!("{error:#}").contains("missing.json"), "{error:#}");
}

/// A model config naming HuggingFace tokenizer `repo`, with OpenCLIP's
/// `tokenizer_kwargs`.
fn hf_model_config(repo: &str, context_length: usize, kwargs: serde_json::Value) -> String {
    serde_json::json!({
        "embed_dim": 32,
        "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8},
        "text_cfg": {
            "context_length": context_length, "vocab_size": 3000, "width": 48, "heads": 4,
            "layers": 2, "hf_tokenizer_name": repo, "tokenizer_kwargs": kwargs
        }
    })
    .to_string()
}

/// A config's `hf_tokenizer_name`, found in a HuggingFace hub cache (laid
/// out as huggingface_hub lays it out, offline), gives the ids of
/// OpenCLIP's `get_tokenizer(name)` on the corpus, for a tokenizer of each
/// kind OpenCLIP's configs use: SentencePiece-style Unigram with SigLIP's
/// `clean: canonicalize`, WordPiece with `strip_sep_token`, byte-level BPE
/// with `clean: lower`. Each is trained on the corpus by the `tokenizers`
/// library and saved by `transformers` in the oracle.
#[test]
fn hf_tokenizers_by_name_match_open_clip_get_tokenizer() {
    let captions = caption_corpus();
    let dir = tempfile::tempdir().expect("temp dir");
    let hub = dir.path().join("hub");
    let models = dir.path().join("models");
    std::fs::create_dir_all(&models).unwrap();
    let cases = [
        (
            "hf-unigram",
            "clipflow-test/unigram",
            64,
            serde_json::json!({"clean": "canonicalize"}),
        ),
        (
            "hf-wordpiece",
            "clipflow-test/wordpiece",
            32,
            serde_json::json!({"strip_sep_token": true}),
        ),
        (
            "hf-bpe",
            "clipflow-test/bpe",
            24,
            serde_json::json!({"clean": "lower"}),
        ),
    ];
    for (name, repo, context_length, kwargs) in &cases {
        let config = hf_model_config(repo, *context_length, kwargs.clone());
        std::fs::write(models.join(format!("{name}.json")), config).unwrap();
    }
    let mut corpus = tempfile::NamedTempFile::new().expect("creating the corpus file");
    for caption in &captions {
        writeln!(corpus, "{}", serde_json::to_string(caption).unwrap()).unwrap();
    }
    corpus.flush().unwrap();
    let mut args = vec![
        corpus.path().to_str().unwrap(),
        hub.to_str().unwrap(),
        models.to_str().unwrap(),
    ];
    args.extend(cases.iter().map(|case| case.0));
    let stdout = common::run_oracle(include_str!("oracle/hf_tokenizer_parity.py"), &args);
    // (The tokenizers library's trainers print their progress too.)
    let oracle: Vec<Vec<Vec<i64>>> = stdout
        .lines()
        .filter(|line| line.starts_with("[["))
        .map(|line| serde_json::from_str(line).expect("oracle output is JSON"))
        .collect();
    assert_eq!(oracle.len(), cases.len());

    let cache = clipflow_core::hf_hub::HubCache::locate(Some(&hub));
    for ((name, _, context_length, _), oracle_rows) in cases.iter().zip(&oracle) {
        let path = models.join(format!("{name}.json"));
        let text = std::fs::read_to_string(&path).unwrap();
        let config =
            clipflow_core::model::ModelConfig::from_json(&text, name, &Default::default()).unwrap();
        let tokenizer =
            clipflow_core::tokenizer::for_model(name, &config.text_cfg, &cache, None).unwrap();
        let ours: Vec<Vec<i64>> = captions
            .iter()
            .map(|c| tokenizer.encode(c, *context_length))
            .collect();
        assert_same_ids(&captions, &ours, oracle_rows, *context_length);
    }

    // The command line finds the same tokenizer through HF_HUB_CACHE (a
    // caption of one line, as `clipflow tokenize` reads lines).
    let index = captions
        .iter()
        .position(|c| c.len() > 20 && !c.contains(['\n', '\r']))
        .unwrap();
    let model = models.join("hf-wordpiece.json");
    let out = std::process::Command::new(common::clipflow_bin())
        .args(["tokenize", "--model", model.to_str().unwrap()])
        .env("HF_HUB_CACHE", &hub)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            child
                .stdin
                .take()
                .unwrap()
                .write_all(format!("{}\n", captions[index]).as_bytes())?;
            child.wait_with_output()
        })
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ids: Vec<i64> = String::from_utf8(out.stdout)
        .unwrap()
        .split_whitespace()
        .map(|id| id.parse().unwrap())
        .collect();
    assert_eq!(ids, oracle[1][index]);

    // A repo that is not in the cache is named, with how to fetch it.
    let absent = hf_model_config("clipflow-test/absent", 16, serde_json::Value::Null);
    let config =
        clipflow_core::model::ModelConfig::from_json(&absent, "absent", &Default::default())
            .unwrap();
    let error = clipflow_core::tokenizer::for_model("absent", &config.text_cfg, &cache, None)
        .err()
        .expect("an absent tokenizer is an error");
    let message = format!("{error:#}");
    assert!(
        message.contains("clipflow-test/absent") && message.contains("hf download"),
        "{message}"
    );
}
