//! Bad data on the loading path: what travels in place of a sample that had
//! to be dropped ([`SampleOrSkip`], [`BadSample`]), and the policy that
//! counts such drops per kind, logs the first few with their shard and key,
//! and stops the run once more than a set fraction of the data was bad
//! ([`BadDataTally`]). OpenCLIP logs and continues; so does clipflow, up to
//! that fraction.
//!
//! Skips are made where the damage is found (the shard reader for tar and
//! file problems, the decoder and the augmenter for images) and travel downstream like
//! samples, so that the batcher, which sees the whole stream in one place,
//! keeps the tally.

use std::collections::BTreeMap;
use std::fmt;

use clipflow_core::data::{Skip, SkipKind};
use serde::Serialize;

/// A sample on its way to a batch, or the record of one that was dropped.
#[derive(Debug)]
pub enum SampleOrSkip<T> {
    Sample(T),
    /// Bad data, counted against the bad-data policy.
    Skipped(BadSample),
    /// Left out on purpose by a stage of the pipeline (a filter); not bad
    /// data, and not counted as such.
    Filtered,
}

/// What went wrong with a sample, shard or member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadDataKind {
    /// Found while reading the data (see [`SkipKind`]).
    Source(SkipKind),
    /// Image bytes that do not decode (corrupt or truncated JPEG, unknown
    /// format), or an image above the pixel limit (a decompression bomb).
    UndecodableImage,
    /// A decoded image the training transform cannot crop (one with no
    /// pixels).
    UntransformableImage,
    /// A sample that never reached the batcher: the worker holding it
    /// failed (and was restarted).
    LostWithFailedWorker,
}

impl BadDataKind {
    /// The snake_case name used in logs and in `clipflow bench data`'s JSON.
    pub fn name(self) -> &'static str {
        match self {
            BadDataKind::Source(kind) => kind.name(),
            BadDataKind::UndecodableImage => "undecodable_image",
            BadDataKind::UntransformableImage => "untransformable_image",
            BadDataKind::LostWithFailedWorker => "lost_with_failed_worker",
        }
    }
}

/// A dropped sample (or shard, or member): its kind, where it was and why.
#[derive(Debug, Clone, PartialEq)]
pub struct BadSample {
    pub kind: BadDataKind,
    /// The shard URL or CSV file.
    pub origin: String,
    /// The sample key or member name, where there is one.
    pub key: Option<String>,
    pub detail: String,
}

impl From<Skip> for BadSample {
    fn from(skip: Skip) -> Self {
        BadSample {
            kind: BadDataKind::Source(skip.kind),
            origin: skip.origin,
            key: skip.key,
            detail: skip.detail,
        }
    }
}

impl fmt::Display for BadSample {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "skipped ({}) in {}", self.kind.name(), self.origin)?;
        if let Some(key) = &self.key {
            write!(f, " at {key}")?;
        }
        write!(f, ": {}", self.detail)
    }
}

/// Counts of dropped items by kind name; serialises as
/// `{"missing_caption": 3, "undecodable_image": 1}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct BadDataCounts(BTreeMap<&'static str, u64>);

impl BadDataCounts {
    pub fn record(&mut self, kind: BadDataKind) {
        *self.0.entry(kind.name()).or_default() += 1;
    }

    /// The count for a kind name such as `"missing_caption"`.
    pub fn get(&self, kind_name: &str) -> u64 {
        self.0.get(kind_name).copied().unwrap_or(0)
    }

    pub fn total(&self) -> u64 {
        self.0.values().sum()
    }
}

impl fmt::Display for BadDataCounts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(|(k, n)| format!("{n} {k}")).collect();
        f.write_str(&parts.join(", "))
    }
}

/// How much bad data a run tolerates.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BadDataPolicy {
    /// The run stops once more than this fraction of the items seen (samples
    /// plus skips) were skipped.
    pub max_fraction: f64,
    /// The fraction is judged once this many items were seen, and always at
    /// the end of the data, so a few bad samples at the start do not stop a
    /// run.
    pub min_items: u64,
    /// How many skips are logged one by one; later ones are only counted.
    pub log_first: u64,
}

impl Default for BadDataPolicy {
    fn default() -> Self {
        BadDataPolicy {
            max_fraction: 0.25,
            min_items: 1000,
            log_first: 10,
        }
    }
}

/// The run saw more bad data than its policy allows.
#[derive(Debug, thiserror::Error)]
#[error(
    "too much bad data: {skipped} of the {seen} items read were skipped ({percent:.1}%, over the \
     limit of {limit:.1}% that max-bad-fraction sets): {counts}; the first skips are logged above"
)]
pub struct TooMuchBadData {
    pub skipped: u64,
    pub seen: u64,
    pub percent: f64,
    pub limit: f64,
    pub counts: BadDataCounts,
}

/// The running count of good samples and skips of one stream, judged
/// against a [`BadDataPolicy`].
#[derive(Debug, Clone)]
pub struct BadDataTally {
    policy: BadDataPolicy,
    samples: u64,
    counts: BadDataCounts,
}

impl BadDataTally {
    pub fn new(policy: BadDataPolicy) -> Self {
        BadDataTally {
            policy,
            samples: 0,
            counts: BadDataCounts::default(),
        }
    }

    pub fn record_sample(&mut self) {
        self.samples += 1;
    }

    /// Counts a skip, logs it if it is among the first few, and fails once
    /// the policy's fraction is exceeded (after its minimum item count).
    pub fn record_skip(&mut self, bad: &BadSample) -> Result<(), TooMuchBadData> {
        self.counts.record(bad.kind);
        let skipped = self.counts.total();
        if skipped <= self.policy.log_first {
            log_skip(bad, skipped == self.policy.log_first);
        }
        if self.seen() >= self.policy.min_items {
            self.check()?;
        }
        Ok(())
    }

    /// Judges the whole stream; call at its end.
    pub fn check(&self) -> Result<(), TooMuchBadData> {
        let seen = self.seen();
        let skipped = self.counts.total();
        if seen == 0 || skipped as f64 <= self.policy.max_fraction * seen as f64 {
            return Ok(());
        }
        Err(TooMuchBadData {
            skipped,
            seen,
            percent: 100.0 * skipped as f64 / seen as f64,
            limit: 100.0 * self.policy.max_fraction,
            counts: self.counts.clone(),
        })
    }

    pub fn counts(&self) -> &BadDataCounts {
        &self.counts
    }

    pub fn samples(&self) -> u64 {
        self.samples
    }

    fn seen(&self) -> u64 {
        self.samples + self.counts.total()
    }
}

/// Reports one skip: as a `tracing` warning when the program installed a
/// subscriber, else on stderr, where OpenCLIP's warnings go.
fn log_skip(bad: &BadSample, last_one_logged: bool) {
    let more = if last_one_logged {
        " (further skips are counted, not logged)"
    } else {
        ""
    };
    if tracing::dispatcher::has_been_set() {
        tracing::warn!("{bad}{more}");
    } else {
        eprintln!("clipflow: {bad}{more}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bad(kind: BadDataKind) -> BadSample {
        BadSample {
            kind,
            origin: "shard-0.tar".into(),
            key: Some("000".into()),
            detail: "test".into(),
        }
    }

    #[test]
    fn judges_the_fraction_after_the_minimum() {
        let policy = BadDataPolicy {
            max_fraction: 0.1,
            min_items: 20,
            log_first: 0,
        };
        let mut tally = BadDataTally::new(policy);
        // 5 skips in the first 10 items: over 10%, but below the minimum count.
        for _ in 0..5 {
            tally.record_sample();
            tally
                .record_skip(&bad(BadDataKind::UndecodableImage))
                .unwrap();
        }
        for _ in 0..9 {
            tally.record_sample();
        }
        let error = tally
            .record_skip(&bad(BadDataKind::Source(SkipKind::MissingCaption)))
            .unwrap_err();
        assert_eq!((error.skipped, error.seen), (6, 20));
        assert_eq!(error.counts.get("undecodable_image"), 5);
        assert_eq!(error.counts.get("missing_caption"), 1);
    }

    #[test]
    fn the_end_check_applies_to_short_streams() {
        let mut tally = BadDataTally::new(BadDataPolicy {
            max_fraction: 0.5,
            min_items: 1000,
            log_first: 0,
        });
        tally.record_sample();
        tally
            .record_skip(&bad(BadDataKind::UndecodableImage))
            .unwrap();
        assert!(tally.check().is_ok(), "1 of 2 is not over 50%");
        tally
            .record_skip(&bad(BadDataKind::UndecodableImage))
            .unwrap();
        assert!(tally.check().is_err(), "2 of 3 is over 50%");
    }
}
