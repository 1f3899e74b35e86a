//! The CLIP tokenizer: OpenCLIP's `SimpleTokenizer` (the default for CLIP
//! models, `open_clip.tokenize`), giving the same ids for the same caption.
//!
//! A caption is cleaned (see [`clean_caption`]), lower-cased, split into
//! words, numbers and punctuation runs, and each piece's UTF-8 bytes are
//! merged by byte-level BPE into vocabulary ids. The vocabulary is the
//! `bpe_simple_vocab_16e6.txt.gz` merge list that ships with OpenCLIP,
//! copied from the installed `open_clip` package when clipflow is built and
//! embedded in the binary.

use std::collections::HashMap;
use std::io::Read;
use std::sync::RwLock;

use anyhow::{bail, Context, Result};
use flate2::read::GzDecoder;
use regex::Regex;

use super::text_fixer::clean_caption;
use super::TextTokenizer;

/// OpenCLIP's BPE merge list (`bpe_simple_vocab_16e6.txt.gz`), copied
/// from the installed `open_clip` package when clipflow is built
/// (core/build.rs), so that the binary needs no Python package.
const OPEN_CLIP_VOCAB: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/bpe_simple_vocab_16e6.txt.gz"));

/// How many merges of the list CLIP uses: a vocabulary of 49,408 =
/// 256 bytes + 256 word-final bytes + these merges + 2 special tokens.
const MERGE_COUNT: usize = 49152 - 256 - 2;

const START_OF_TEXT: &str = "<start_of_text>";
const END_OF_TEXT: &str = "<end_of_text>";

/// Marks a symbol that ends a word.
const END_OF_WORD: &str = "</w>";

/// The BPE results kept per distinct word; past this the cache starts over,
/// so memory stays bounded on endless streams of captions.
const MAX_CACHED_WORDS: usize = 1 << 20;

/// Whether a byte is a printable Latin-1 character that stands for itself
/// in GPT-2's byte-to-character map.
fn byte_stands_for_itself(byte: u8) -> bool {
    matches!(byte, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF)
}

/// GPT-2's reversible map from bytes to printable characters: printable
/// Latin-1 bytes stand for themselves, the others (controls, space, NBSP,
/// soft hyphen) are moved to U+0100 onwards in byte order.
fn byte_to_symbol_char() -> [char; 256] {
    let mut chars = ['\0'; 256];
    let mut next_moved = 256u32;
    for byte in 0..=255u8 {
        chars[usize::from(byte)] = if byte_stands_for_itself(byte) {
            char::from(byte)
        } else {
            let moved = char::from_u32(next_moved).expect("U+0100..U+0143 are chars");
            next_moved += 1;
            moved
        };
    }
    chars
}

/// The order of the byte symbols in the vocabulary: the bytes that stand
/// for themselves first, then the moved ones, each group in byte order.
fn byte_symbol_order() -> impl Iterator<Item = u8> + Clone {
    let printable = (0..=255u8).filter(|&byte| byte_stands_for_itself(byte));
    let moved = (0..=255u8).filter(|&byte| !byte_stands_for_itself(byte));
    printable.chain(moved)
}

/// One merge rule: the symbol two adjacent symbols become, and its priority
/// (lower merges first).
#[derive(Clone, Copy)]
struct Merge {
    rank: u32,
    merged: u32,
}

/// OpenCLIP's `SimpleTokenizer` (see the module documentation).
pub struct ClipTokenizer {
    /// Symbol id of each byte inside a word, and at the end of a word.
    byte_symbols: [u32; 256],
    byte_symbols_word_end: [u32; 256],
    merges: HashMap<(u32, u32), Merge>,
    start_of_text: u32,
    end_of_text: u32,
    vocab_size: usize,
    /// Splits cleaned, lower-cased text into the pieces BPE runs on.
    pre_tokenizer: Regex,
    /// BPE ids of each word seen so far.
    word_cache: RwLock<HashMap<String, Vec<u32>>>,
}

impl ClipTokenizer {
    /// The tokenizer of OpenCLIP's vocabulary (embedded in the binary).
    pub fn new() -> Result<ClipTokenizer> {
        ClipTokenizer::from_gzipped(OPEN_CLIP_VOCAB, "OpenCLIP's BPE vocabulary")
    }

    /// Loads the gzipped BPE merge list `bytes` in OpenCLIP's format (a
    /// header line, then one merge `left right` per line); `what` names it
    /// in errors.
    fn from_gzipped(bytes: &[u8], what: &str) -> Result<ClipTokenizer> {
        let mut text = String::new();
        GzDecoder::new(bytes)
            .read_to_string(&mut text)
            .with_context(|| format!("reading {what} (gzipped UTF-8)"))?;
        ClipTokenizer::from_merges_text(&text).with_context(|| format!("parsing {what}"))
    }

    fn from_merges_text(text: &str) -> Result<ClipTokenizer> {
        let merge_lines: Vec<&str> = text.split('\n').skip(1).take(MERGE_COUNT).collect();
        if merge_lines.len() < MERGE_COUNT {
            bail!(
                "expected {MERGE_COUNT} merges after the header line, found {}",
                merge_lines.len()
            );
        }
        let mut merge_pairs = Vec::with_capacity(MERGE_COUNT);
        for (index, line) in merge_lines.iter().enumerate() {
            let mut parts = line.split_whitespace();
            match (parts.next(), parts.next(), parts.next()) {
                (Some(left), Some(right), None) => merge_pairs.push((left, right)),
                _ => bail!("line {} is not a merge `left right`: {line:?}", index + 2),
            }
        }

        // The vocabulary, in id order; a repeated string keeps its last id.
        let byte_chars = byte_to_symbol_char();
        let symbol_chars = byte_symbol_order().map(|byte| byte_chars[usize::from(byte)]);
        let mut vocab: Vec<String> = symbol_chars.clone().map(String::from).collect();
        vocab.extend(symbol_chars.map(|c| format!("{c}{END_OF_WORD}")));
        vocab.extend(
            merge_pairs
                .iter()
                .map(|(left, right)| format!("{left}{right}")),
        );
        vocab.push(START_OF_TEXT.to_string());
        vocab.push(END_OF_TEXT.to_string());
        let vocab_size = vocab.len();
        let ids: HashMap<&str, u32> = vocab
            .iter()
            .enumerate()
            .map(|(id, symbol)| (symbol.as_str(), id as u32))
            .collect();
        let id_of = |symbol: &str| -> Result<u32> {
            ids.get(symbol)
                .copied()
                .with_context(|| format!("merge part {symbol:?} is not in the vocabulary"))
        };

        let mut merges = HashMap::with_capacity(MERGE_COUNT);
        for (rank, (left, right)) in merge_pairs.iter().enumerate() {
            let pair = (id_of(left)?, id_of(right)?);
            let merged = id_of(&format!("{left}{right}"))?;
            // As in a Python dict, a repeated pair keeps its last rank.
            merges.insert(
                pair,
                Merge {
                    rank: rank as u32,
                    merged,
                },
            );
        }
        let mut byte_symbols = [0; 256];
        let mut byte_symbols_word_end = [0; 256];
        for (byte, symbol_char) in byte_chars.iter().enumerate() {
            byte_symbols[byte] = id_of(&symbol_char.to_string())?;
            byte_symbols_word_end[byte] = id_of(&format!("{symbol_char}{END_OF_WORD}"))?;
        }

        let pre_tokenizer = Regex::new(concat!(
            r"(?i:<start_of_text>|<end_of_text>|'s|'t|'re|'ve|'m|'ll|'d)",
            r"|\p{L}+|\p{N}",
            // U+0345 folds to a Greek letter, so OpenCLIP's case-insensitive
            // pattern matches it nowhere: it is dropped.
            r"|[^\s\p{L}\p{N}\x{345}]+",
        ))
        .context("building the pre-tokenizer pattern")?;

        Ok(ClipTokenizer {
            byte_symbols,
            byte_symbols_word_end,
            merges,
            start_of_text: id_of(START_OF_TEXT)?,
            end_of_text: id_of(END_OF_TEXT)?,
            vocab_size,
            pre_tokenizer,
            word_cache: RwLock::new(HashMap::new()),
        })
    }

    /// Id of `<start_of_text>` (49406 with OpenCLIP's vocabulary).
    pub fn start_of_text_id(&self) -> i64 {
        i64::from(self.start_of_text)
    }

    /// Id of `<end_of_text>` (49407 with OpenCLIP's vocabulary).
    pub fn end_of_text_id(&self) -> i64 {
        i64::from(self.end_of_text)
    }

    /// Number of ids (49408 with OpenCLIP's vocabulary).
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// The ids of `text` without start/end tokens, truncation or padding
    /// (`SimpleTokenizer.encode`).
    pub fn text_ids(&self, text: &str) -> Vec<i64> {
        let cleaned = clean_caption(text).to_lowercase();
        let mut ids = Vec::new();
        for piece in self.pre_tokenizer.find_iter(&cleaned) {
            let piece = piece.as_str();
            match piece {
                START_OF_TEXT => ids.push(i64::from(self.start_of_text)),
                END_OF_TEXT => ids.push(i64::from(self.end_of_text)),
                word => ids.extend(self.word_ids(word).into_iter().map(i64::from)),
            }
        }
        ids
    }

    /// The BPE ids of one pre-tokenised piece, through the cache.
    fn word_ids(&self, word: &str) -> Vec<u32> {
        if let Some(cached) = self
            .word_cache
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(word)
        {
            return cached.clone();
        }
        let ids = self.byte_pair_encode(word.as_bytes());
        let mut cache = self
            .word_cache
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if cache.len() >= MAX_CACHED_WORDS {
            cache.clear();
        }
        cache.insert(word.to_string(), ids.clone());
        ids
    }

    /// Byte-level BPE: start from one symbol per byte (the last one marked as
    /// ending the word) and repeatedly merge every occurrence, left to right,
    /// of the adjacent pair with the best rank, until no pair can merge.
    fn byte_pair_encode(&self, word: &[u8]) -> Vec<u32> {
        let Some((&last, init)) = word.split_last() else {
            return Vec::new();
        };
        let mut symbols: Vec<u32> = init
            .iter()
            .map(|&byte| self.byte_symbols[usize::from(byte)])
            .collect();
        symbols.push(self.byte_symbols_word_end[usize::from(last)]);

        while symbols.len() > 1 {
            let best = symbols
                .windows(2)
                .filter_map(|pair| self.merges.get(&(pair[0], pair[1])))
                .min_by_key(|merge| merge.rank);
            let Some(&best) = best else {
                break;
            };
            let mut merged = Vec::with_capacity(symbols.len());
            let mut at = 0;
            while at < symbols.len() {
                let merges_here = at + 1 < symbols.len()
                    && self
                        .merges
                        .get(&(symbols[at], symbols[at + 1]))
                        .is_some_and(|merge| merge.rank == best.rank);
                if merges_here {
                    merged.push(best.merged);
                    at += 2;
                } else {
                    merged.push(symbols[at]);
                    at += 1;
                }
            }
            symbols = merged;
        }
        symbols
    }
}

impl TextTokenizer for ClipTokenizer {
    /// `<start_of_text>`, the caption's ids, `<end_of_text>`; cut to
    /// `context_length` with the last kept id replaced by `<end_of_text>`,
    /// or padded with zeros.
    fn encode(&self, text: &str, context_length: usize) -> Vec<i64> {
        let mut ids = Vec::with_capacity(context_length.max(2));
        ids.push(self.start_of_text_id());
        ids.extend(self.text_ids(text));
        ids.push(self.end_of_text_id());
        if ids.len() > context_length {
            ids.truncate(context_length);
            if let Some(last) = ids.last_mut() {
                *last = self.end_of_text_id();
            }
        }
        ids.resize(context_length, 0);
        ids
    }
}
