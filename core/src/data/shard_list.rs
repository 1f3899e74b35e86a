//! The shard list of a webdataset: expanding `--train-data` (brace patterns
//! such as `shard-{0000..2175}.tar`, several sources joined with `::`, `${x}`
//! references to `WDS_x` environment variables) with
//! `--train-data-upsampling-factors`, as OpenCLIP's `expand_urls` does; the
//! per-epoch shard shuffle and the split of shards across ranks and readers
//! of a one-pass epoch; and resampling with replacement (`--dataset-resampled`).

use anyhow::{bail, ensure, Context, Result};
use rand::distr::weighted::WeightedIndex;
use rand::distr::Distribution;
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::python_random::PythonRandom;
use super::shuffle_buffer::{ShuffleBuffer, SHARD_SHUFFLE_INITIAL, SHARD_SHUFFLE_SIZE};
use super::{epoch_rng, ReaderSlot, RngPurpose, SourceItem};

/// The separator of several data sources in one `--train-data` value.
pub const SOURCE_SEPARATOR: &str = "::";

/// The expanded shard URLs of a `--train-data` / `--val-data` value, with one
/// sampling weight per shard when upsampling factors were given.
#[derive(Debug, Clone, PartialEq)]
pub struct ShardList {
    urls: Vec<String>,
    weights: Option<Vec<f64>>,
}

impl ShardList {
    /// Expands `urls` as OpenCLIP's `expand_urls(urls, weights)` does.
    ///
    /// Without `upsampling_factors`, each `::`-joined source has its `${x}`
    /// references replaced by the environment variable `WDS_x` (repeatedly,
    /// up to 10 rounds, as webdataset does) and is then brace-expanded. With
    /// them, there must be one factor per source, each source is
    /// brace-expanded (no environment substitution, as in OpenCLIP) and every
    /// shard of a source gets its source's factor as weight.
    pub fn expand(urls: &str, upsampling_factors: Option<&str>) -> Result<ShardList> {
        let sources: Vec<&str> = urls.split(SOURCE_SEPARATOR).collect();
        let Some(factors) = upsampling_factors else {
            let mut expanded = Vec::new();
            for source in sources {
                let source = substitute_wds_env(source)?;
                expanded.extend(
                    expand_braces(&source).with_context(|| format!("in the data path {urls:?}"))?,
                );
            }
            return Ok(ShardList {
                urls: expanded,
                weights: None,
            });
        };
        let factors: Vec<&str> = factors.split(SOURCE_SEPARATOR).collect();
        ensure!(
            factors.len() == sources.len(),
            "--train-data-upsampling-factors has {} factors but the data path {urls:?} has {} `::`-joined sources; give one factor per source",
            factors.len(),
            sources.len()
        );
        let mut expanded = Vec::new();
        let mut weights = Vec::new();
        for (source, factor) in sources.iter().zip(factors) {
            let weight = parse_upsampling_factor(factor)?;
            let shards =
                expand_braces(source).with_context(|| format!("in the data path {urls:?}"))?;
            weights.extend(std::iter::repeat_n(weight, shards.len()));
            expanded.extend(shards);
        }
        ensure!(
            weights.iter().any(|&w| w > 0.0),
            "--train-data-upsampling-factors are all zero: at least one source needs a positive factor"
        );
        Ok(ShardList {
            urls: expanded,
            weights: Some(weights),
        })
    }

    pub fn urls(&self) -> &[String] {
        &self.urls
    }

    /// One sampling weight per shard, when upsampling factors were given.
    pub fn weights(&self) -> Option<&[f64]> {
        self.weights.as_deref()
    }

    pub fn len(&self) -> usize {
        self.urls.len()
    }

    pub fn is_empty(&self) -> bool {
        self.urls.is_empty()
    }
}

/// OpenCLIP accepts `--train-data-upsampling-factors` only when shards are
/// drawn with replacement.
pub fn check_upsampling_needs_resampling(
    upsampling_factors: Option<&str>,
    dataset_resampled: bool,
) -> Result<()> {
    ensure!(
        upsampling_factors.is_none() || dataset_resampled,
        "--train-data-upsampling-factors is only supported when sampling with replacement: add --dataset-resampled"
    );
    Ok(())
}

fn parse_upsampling_factor(factor: &str) -> Result<f64> {
    let weight: f64 = factor
        .trim()
        .parse()
        .with_context(|| format!("--train-data-upsampling-factors: {factor:?} is not a number"))?;
    ensure!(
        weight.is_finite() && weight >= 0.0,
        "--train-data-upsampling-factors: {factor:?} is not a finite non-negative number"
    );
    Ok(weight)
}

/// Replaces `${name}` with the value of the environment variable `WDS_name`,
/// repeating while the result changes (at most 10 rounds), as webdataset's
/// `expand_urls` does.
fn substitute_wds_env(url: &str) -> Result<String> {
    let mut current = url.to_owned();
    for _ in 0..10 {
        let next = substitute_wds_env_once(&current)?;
        if next == current {
            break;
        }
        current = next;
    }
    Ok(current)
}

fn substitute_wds_env_once(text: &str) -> Result<String> {
    let mut result = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        let after = &rest[start + 2..];
        let name_len = after
            .find(|c: char| !(c.is_alphanumeric() || c == '_'))
            .unwrap_or(after.len());
        if name_len == 0 || !after[name_len..].starts_with('}') {
            // Not a reference: keep the `${` and go on after it.
            result.push_str(&rest[..start + 2]);
            rest = after;
            continue;
        }
        let name = &after[..name_len];
        let variable = format!("WDS_{name}");
        let value = std::env::var(&variable).with_context(|| {
            format!("the data path refers to ${{{name}}} but the environment variable {variable} is not set")
        })?;
        result.push_str(&rest[..start]);
        result.push_str(&value);
        rest = &after[name_len + 1..];
    }
    result.push_str(rest);
    Ok(result)
}

/// Bash-style brace expansion with the semantics of the `braceexpand` Python
/// package that webdataset uses: sequences `{a,b}`, integer ranges
/// `{1..10}` / `{10..1}` / `{1..10..2}` (zero-padded to the widest bound when
/// a bound has a leading zero), letter ranges `{a..e}`, nesting, and
/// backslash escapes. A brace group that is neither a range nor a sequence
/// stays literal (`{x}`). Unbalanced braces are an error.
pub fn expand_braces(pattern: &str) -> Result<Vec<String>> {
    let chars: Vec<char> = pattern.chars().collect();
    let expanded = expand_pattern(&chars)
        .with_context(|| format!("cannot expand the braces of {pattern:?}"))?;
    Ok(expanded.iter().map(|s| remove_escapes(s)).collect())
}

/// Expands one pattern: literal runs and top-level brace groups, combined as
/// a cartesian product (the first part varies slowest). Escapes are kept;
/// [`remove_escapes`] drops them at the end.
fn expand_pattern(pattern: &[char]) -> Result<Vec<String>> {
    let mut parts: Vec<Vec<String>> = Vec::new();
    let mut part_start = 0;
    let mut pos = 0;
    let mut depth = 0i64;
    while pos < pattern.len() {
        match pattern[pos] {
            '\\' => {
                pos += 2;
                continue;
            }
            '{' => {
                if depth == 0 && pos > part_start {
                    parts.push(vec![pattern[part_start..pos].iter().collect()]);
                    part_start = pos;
                }
                depth += 1;
            }
            '}' => {
                depth -= 1;
                if depth == 0 {
                    parts.push(expand_group(&pattern[part_start + 1..pos])?);
                    part_start = pos + 1;
                }
            }
            _ => {}
        }
        pos += 1;
    }
    if depth != 0 {
        bail!("unbalanced braces");
    }
    if part_start < pattern.len() {
        parts.push(vec![pattern[part_start..].iter().collect()]);
    }
    Ok(cartesian_concat(&parts))
}

/// Expands the inside of one top-level `{...}` group.
fn expand_group(group: &[char]) -> Result<Vec<String>> {
    let text: String = group.iter().collect();
    if let Some(range) = integer_range(&text)? {
        return Ok(range);
    }
    if let Some(range) = letter_range(&text) {
        return Ok(range);
    }
    if let Some(alternatives) = split_sequence(group) {
        let mut expanded = Vec::new();
        for alternative in alternatives {
            expanded.extend(expand_pattern(alternative)?);
        }
        return Ok(expanded);
    }
    // Neither a range nor a sequence: the braces stay, the inside expands.
    Ok(expand_pattern(group)?
        .into_iter()
        .map(|inner| format!("{{{inner}}}"))
        .collect())
}

/// Splits `start..end` or `start..end..step` into its bounds, if `text` has
/// that shape and each bound satisfies `is_bound`.
fn range_bounds(text: &str, is_bound: impl Fn(&str) -> bool) -> Option<Vec<&str>> {
    let bounds: Vec<&str> = text.split("..").collect();
    let step_ok = |step: &str| {
        let digits = step.strip_prefix('-').unwrap_or(step);
        !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
    };
    let shaped = match bounds.len() {
        2 => is_bound(bounds[0]) && is_bound(bounds[1]),
        3 => is_bound(bounds[0]) && is_bound(bounds[1]) && step_ok(bounds[2]),
        _ => false,
    };
    shaped.then_some(bounds)
}

/// The step of a range: its magnitude (the sign is ignored), 0 meaning 1.
fn range_step(bounds: &[&str]) -> Result<usize> {
    let Some(step) = bounds.get(2) else {
        return Ok(1);
    };
    let magnitude: usize = step
        .trim_start_matches('-')
        .parse()
        .with_context(|| format!("the range step {step:?} is too large"))?;
    Ok(magnitude.max(1))
}

fn integer_range(text: &str) -> Result<Option<Vec<String>>> {
    let is_integer = |s: &str| {
        let digits = s.strip_prefix('-').unwrap_or(s);
        !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
    };
    let Some(bounds) = range_bounds(text, is_integer) else {
        return Ok(None);
    };
    let parse = |s: &str| -> Result<i64> {
        s.parse()
            .with_context(|| format!("the range bound {s:?} is too large"))
    };
    let (start, end) = (parse(bounds[0])?, parse(bounds[1])?);
    let step = range_step(&bounds)?;
    let zero_padded = bounds[..2]
        .iter()
        .any(|b| *b != "0" && *b != "-0" && (b.starts_with('0') || b.starts_with("-0")));
    let width = if zero_padded {
        bounds[0].len().max(bounds[1].len())
    } else {
        0
    };
    let values: Vec<i64> = if start < end {
        (start..=end).step_by(step).collect()
    } else {
        (end..=start).rev().step_by(step).collect()
    };
    Ok(Some(
        values.iter().map(|v| format!("{v:0width$}")).collect(),
    ))
}

/// The letters a letter range walks: upper case first, then lower case.
const RANGE_ALPHABET: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

fn letter_range(text: &str) -> Option<Vec<String>> {
    let is_letter = |s: &str| s.len() == 1 && s.bytes().all(|b| b.is_ascii_alphabetic());
    let bounds = range_bounds(text, is_letter)?;
    let step = range_step(&bounds).ok()?;
    let index = |s: &str| RANGE_ALPHABET.find(s).expect("bounds are ASCII letters");
    let (start, end) = (index(bounds[0]), index(bounds[1]));
    let letters: Vec<String> = if start < end {
        RANGE_ALPHABET[start..=end]
            .chars()
            .step_by(step)
            .map(String::from)
            .collect()
    } else {
        RANGE_ALPHABET[end..=start]
            .chars()
            .rev()
            .step_by(step)
            .map(String::from)
            .collect()
    };
    Some(letters)
}

/// Splits a group at its top-level commas; `None` when it has none.
fn split_sequence(group: &[char]) -> Option<Vec<&[char]>> {
    let mut alternatives = Vec::new();
    let mut start = 0;
    let mut pos = 0;
    let mut depth = 0i64;
    while pos < group.len() {
        match group[pos] {
            '\\' => {
                pos += 2;
                continue;
            }
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                alternatives.push(&group[start..pos]);
                start = pos + 1;
            }
            _ => {}
        }
        pos += 1;
    }
    if depth != 0 || alternatives.is_empty() {
        return None;
    }
    alternatives.push(&group[start.min(group.len())..]);
    Some(alternatives)
}

fn cartesian_concat(parts: &[Vec<String>]) -> Vec<String> {
    let mut combined = vec![String::new()];
    for part in parts {
        combined = combined
            .iter()
            .flat_map(|prefix| part.iter().map(move |piece| format!("{prefix}{piece}")))
            .collect();
    }
    combined
}

/// Drops the backslash of each `\x` escape (a backslash before a newline or
/// at the very end stays).
fn remove_escapes(text: &str) -> String {
    let mut result = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, chars.peek()) {
            ('\\', Some(&next)) if next != '\n' => {
                result.push(next);
                chars.next();
            }
            _ => result.push(c),
        }
    }
    result
}

/// The shards in the order of a one-pass training epoch: OpenCLIP's
/// `detshuffle2`, a buffered shuffle of its shard-shuffle sizes (2000,
/// first pick after 500) drawing from Python's `random.Random(seed +
/// epoch)`, so every rank and reader computes the same order, and the same
/// as OpenCLIP's ranks.
pub fn shuffle_shards(urls: &[String], seed: u64, epoch: u64) -> Vec<String> {
    let rng = PythonRandom::new(seed.wrapping_add(epoch));
    ShuffleBuffer::new(
        urls.iter().cloned(),
        SHARD_SHUFFLE_SIZE,
        SHARD_SHUFFLE_INITIAL,
        rng,
    )
    .collect()
}

/// The shards one reader takes from an ordered list: every `world_size`-th
/// shard starting at its rank, then every `workers`-th of those starting at
/// its worker number (OpenCLIP's `split_by_node` then `split_by_worker`).
/// Over all slots, every shard is taken exactly once.
pub fn split_for_reader(shards: &[String], slot: ReaderSlot) -> Vec<String> {
    shards
        .iter()
        .skip(slot.rank)
        .step_by(slot.world_size.max(1))
        .skip(slot.worker)
        .step_by(slot.workers.max(1))
        .cloned()
        .collect()
}

/// What one reader reads of a one-pass training epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReaderShare {
    /// The shards it opens, in order.
    pub shards: Vec<String>,
    /// When there are fewer shards than readers, every reader opens every
    /// shard and keeps the samples whose place in that stream is `offset`
    /// modulo `every` (its global reader index, of all readers); `None`
    /// when it keeps all the samples of its own shards.
    pub sample_split: Option<SampleSplit>,
}

/// Every `every`-th sample from `offset` (see [`ReaderShare`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SampleSplit {
    pub every: usize,
    pub offset: usize,
}

impl SampleSplit {
    /// This reader's items of a stream every reader reads: its samples, and
    /// the skips when it is the first reader (so that a bad shard or member
    /// is counted once, not by every reader).
    pub fn take_share(
        self,
        items: impl Iterator<Item = SourceItem>,
    ) -> impl Iterator<Item = SourceItem> {
        let mut index = 0u64;
        items.filter(move |item| match item {
            SourceItem::Sample(_) => {
                let mine = index % self.every as u64 == self.offset as u64;
                index += 1;
                mine
            }
            SourceItem::Skipped(_) => self.offset == 0,
        })
    }
}

/// One reader's share of a one-pass training epoch: the shards in
/// [`shuffle_shards`] order, then [`split_for_reader`] (OpenCLIP's split by
/// rank, then by worker) when there are at least as many shards as
/// readers. With fewer (one shard and four workers, say, which OpenCLIP
/// refuses), the samples are split instead: each reader reads every shard
/// and keeps every (readers)-th sample, so every sample is still read by
/// exactly one reader.
pub fn train_epoch_shards(
    shards: &ShardList,
    seed: u64,
    epoch: u64,
    slot: ReaderSlot,
) -> Result<ReaderShare> {
    ensure!(!shards.is_empty(), "the training data names no shards");
    let readers = slot.world_size * slot.workers;
    let ordered = shuffle_shards(shards.urls(), seed, epoch);
    Ok(if shards.len() >= readers {
        ReaderShare {
            shards: split_for_reader(&ordered, slot),
            sample_split: None,
        }
    } else {
        ReaderShare {
            shards: ordered,
            sample_split: Some(SampleSplit {
                every: readers,
                offset: slot.global_index(),
            }),
        }
    })
}

/// An endless stream of shards drawn with replacement (`--dataset-resampled`):
/// uniformly, or in proportion to the upsampling weights. Each reader draws
/// its own stream, seeded from the seed, the epoch and its slot.
pub struct ResampledShards {
    urls: Vec<String>,
    weighted: Option<WeightedIndex<f64>>,
    rng: ChaCha8Rng,
}

impl ResampledShards {
    pub fn new(
        shards: &ShardList,
        seed: u64,
        epoch: u64,
        slot: ReaderSlot,
    ) -> Result<ResampledShards> {
        ensure!(!shards.is_empty(), "the training data names no shards");
        let weighted = shards
            .weights()
            .map(WeightedIndex::new)
            .transpose()
            .context("invalid --train-data-upsampling-factors")?;
        let rng = epoch_rng(
            seed,
            epoch,
            RngPurpose::ShardResampling,
            slot.global_index() as u64,
        );
        Ok(ResampledShards {
            urls: shards.urls().to_vec(),
            weighted,
            rng,
        })
    }
}

impl Iterator for ResampledShards {
    type Item = String;

    fn next(&mut self) -> Option<String> {
        let index = match &self.weighted {
            Some(weights) => weights.sample(&mut self.rng),
            None => self.rng.random_range(0..self.urls.len()),
        };
        Some(self.urls[index].clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sample_split_keeps_every_nth_sample_and_the_first_reader_keeps_the_skips() {
        use crate::data::{ImageData, Sample, Skip, SkipKind};
        let sample = |key: usize| {
            SourceItem::Sample(Sample {
                key: key.to_string(),
                origin: "one.tar".into(),
                image: ImageData::Encoded {
                    bytes: Vec::new(),
                    extension: "jpg".into(),
                },
                caption: String::new(),
            })
        };
        let skip = SourceItem::Skipped(Skip {
            kind: SkipKind::UnreadableShard,
            origin: "two.tar".into(),
            key: None,
            detail: String::new(),
        });
        let stream = || {
            (0..7)
                .map(sample)
                .chain([skip.clone()])
                .chain((7..9).map(sample))
        };
        let keys = |offset: usize| -> Vec<String> {
            SampleSplit { every: 3, offset }
                .take_share(stream())
                .map(|item| match item {
                    SourceItem::Sample(sample) => sample.key,
                    SourceItem::Skipped(_) => "skip".into(),
                })
                .collect()
        };
        assert_eq!(keys(0), ["0", "3", "6", "skip"]);
        assert_eq!(keys(1), ["1", "4", "7"]);
        assert_eq!(keys(2), ["2", "5", "8"]);
    }

    #[test]
    fn escapes_and_literal_groups() {
        assert_eq!(expand_braces(r"{1\{2,3}").unwrap(), vec!["1{2", "3"]);
        assert_eq!(expand_braces("a{}b").unwrap(), vec!["a{}b"]);
        assert_eq!(expand_braces("{x}").unwrap(), vec!["{x}"]);
        assert!(expand_braces("{1{2,3}").is_err());
    }

    #[test]
    fn wds_environment_references() {
        std::env::set_var("WDS_CLIPFLOW_UNIT_BUCKET", "bucket-${CLIPFLOW_UNIT_INNER}");
        std::env::set_var("WDS_CLIPFLOW_UNIT_INNER", "7");
        let list = ShardList::expand("s3://${CLIPFLOW_UNIT_BUCKET}/{0..1}.tar", None).unwrap();
        assert_eq!(list.urls(), ["s3://bucket-7/0.tar", "s3://bucket-7/1.tar"]);
        assert!(ShardList::expand("${CLIPFLOW_UNIT_UNSET}/a.tar", None).is_err());
    }
}
