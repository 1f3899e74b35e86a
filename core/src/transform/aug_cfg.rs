//! OpenCLIP's `AugmentationCfg`: the `--aug-cfg` settings of the training
//! transform, with OpenCLIP's defaults; reading them from `key=value` items
//! with Python literal values, as OpenCLIP's `--aug-cfg` takes them; and the
//! check of which of them the training transform can honour.

use anyhow::{anyhow, bail, Result};

use crate::py_literal::PyLiteral;

/// The `--aug-cfg` settings, field for field as OpenCLIP's `AugmentationCfg`;
/// `None` (or `false`) is OpenCLIP's default for that key.
#[derive(Clone, Debug, PartialEq)]
pub struct AugmentationCfg {
    /// Range of the crop's area as a fraction of the image's area.
    pub scale: (f64, f64),
    /// Range of the crop's aspect ratio (width / height); read only by timm.
    pub ratio: Option<(f64, f64)>,
    /// Colour-jitter strengths: brightness, contrast, saturation, hue.
    pub color_jitter: Option<Vec<f64>>,
    /// Random-erasing probability; read only by timm.
    pub re_prob: Option<f64>,
    /// Random-erasing box count; read only by timm.
    pub re_count: Option<u32>,
    /// Use timm's augmentation pipeline instead of OpenCLIP's own.
    pub use_timm: bool,
    /// Probability of applying the colour jitter to an image.
    pub color_jitter_prob: Option<f64>,
    /// Probability of turning an image grey.
    pub gray_scale_prob: Option<f64>,
}

impl Default for AugmentationCfg {
    fn default() -> Self {
        AugmentationCfg {
            scale: (0.9, 1.0),
            ratio: None,
            color_jitter: None,
            re_prob: None,
            re_count: None,
            use_timm: false,
            color_jitter_prob: None,
            gray_scale_prob: None,
        }
    }
}

/// One `key=value` item of --aug-cfg: the value as OpenCLIP reads it (a
/// Python literal) and as clipflow uses it (typed and checked).
#[derive(Debug, Clone, PartialEq)]
pub struct AugCfgEntry {
    /// The value as `ast.literal_eval` reads it; this is what OpenCLIP stores.
    pub literal: PyLiteral,
    /// The key with its value in typed form.
    pub setting: AugSetting,
}

/// A key of OpenCLIP's `AugmentationCfg` with a checked value.
#[derive(Debug, Clone, PartialEq)]
pub enum AugSetting {
    /// Range of the crop area as a fraction of the image, for random resized crop.
    Scale((f64, f64)),
    /// Range of the crop aspect ratio; `None` keeps the default.
    Ratio(Option<(f64, f64)>),
    /// Colour-jitter strengths: one value, or brightness, contrast, saturation (and hue).
    ColorJitter(Option<Vec<f64>>),
    /// Probability of random erasing (timm pipeline).
    ReProb(Option<f64>),
    /// Number of random-erasing boxes (timm pipeline).
    ReCount(Option<u32>),
    /// Use timm's augmentation pipeline instead of OpenCLIP's.
    UseTimm(bool),
    /// Probability of applying colour jitter.
    ColorJitterProb(Option<f64>),
    /// Probability of converting to grayscale.
    GrayScaleProb(Option<f64>),
}

impl AugSetting {
    /// The keys --aug-cfg accepts: the fields of OpenCLIP's `AugmentationCfg`.
    pub const KEYS: [&'static str; 8] = [
        "scale",
        "ratio",
        "color_jitter",
        "re_prob",
        "re_count",
        "use_timm",
        "color_jitter_prob",
        "gray_scale_prob",
    ];

    /// The key as written on the command line.
    pub fn key(&self) -> &'static str {
        match self {
            Self::Scale(_) => "scale",
            Self::Ratio(_) => "ratio",
            Self::ColorJitter(_) => "color_jitter",
            Self::ReProb(_) => "re_prob",
            Self::ReCount(_) => "re_count",
            Self::UseTimm(_) => "use_timm",
            Self::ColorJitterProb(_) => "color_jitter_prob",
            Self::GrayScaleProb(_) => "gray_scale_prob",
        }
    }

    /// Checks `literal` against what `key` takes.
    fn from_key_value(key: &str, literal: &PyLiteral) -> Result<Self, String> {
        let optional = |check: fn(&PyLiteral) -> Option<f64>| -> Result<Option<f64>, ()> {
            match literal {
                PyLiteral::None => Ok(None),
                other => check(other).map(Some).ok_or(()),
            }
        };
        let setting = match key {
            "scale" => literal.as_range().map(Self::Scale).ok_or(()),
            "ratio" => match literal {
                PyLiteral::None => Ok(Self::Ratio(None)),
                other => other
                    .as_range()
                    .filter(|(lo, _)| *lo > 0.0)
                    .map(|r| Self::Ratio(Some(r)))
                    .ok_or(()),
            },
            "color_jitter" => match literal {
                PyLiteral::None => Ok(Self::ColorJitter(None)),
                other => other
                    .as_color_jitter()
                    .map(|j| Self::ColorJitter(Some(j)))
                    .ok_or(()),
            },
            "re_prob" => optional(PyLiteral::as_probability).map(Self::ReProb),
            "re_count" => match literal {
                PyLiteral::None => Ok(Self::ReCount(None)),
                PyLiteral::Int(n) => u32::try_from(*n)
                    .ok()
                    .filter(|n| *n > 0)
                    .map(|n| Self::ReCount(Some(n)))
                    .ok_or(()),
                _ => Err(()),
            },
            "use_timm" => match literal {
                PyLiteral::Bool(yes) => Ok(Self::UseTimm(*yes)),
                _ => Err(()),
            },
            "color_jitter_prob" => optional(PyLiteral::as_probability).map(Self::ColorJitterProb),
            "gray_scale_prob" => optional(PyLiteral::as_probability).map(Self::GrayScaleProb),
            unknown => return Err(unknown_aug_cfg_key(unknown)),
        };
        setting.map_err(|()| format!("{key} must be {}, got {literal}", Self::expected(key)))
    }

    /// What a key's value must look like, for error messages.
    fn expected(key: &str) -> &'static str {
        match key {
            "scale" => {
                "a tuple (low, high) of non-negative numbers with low <= high, e.g. (0.08,1.0)"
            }
            "ratio" => {
                "None or a tuple (low, high) of positive numbers with low <= high, e.g. (0.75,1.33)"
            }
            "color_jitter" => "None, a non-negative number, or a tuple of 3 or 4 of them",
            "re_count" => "None or a positive integer",
            "use_timm" => "True or False",
            _ => "None or a probability in [0, 1]",
        }
    }
}

impl AugCfgEntry {
    /// Parses one `key=value` item of --aug-cfg. Like OpenCLIP, the value is
    /// a Python literal; unlike OpenCLIP, which only fails when the model is
    /// built, an unknown key or a value of the wrong shape is refused here.
    pub fn parse(text: &str) -> Result<Self> {
        let (key, value) = text
            .split_once('=')
            .ok_or_else(|| anyhow!("expected key=value, got {text:?}"))?;
        if value.contains('=') {
            bail!("expected a single `=` in key=value, got {text:?}");
        }
        if !AugSetting::KEYS.contains(&key) {
            bail!(unknown_aug_cfg_key(key));
        }
        let literal = PyLiteral::parse(value).map_err(|why| anyhow!("value of {key}: {why}"))?;
        let setting = AugSetting::from_key_value(key, &literal).map_err(|why| anyhow!(why))?;
        Ok(AugCfgEntry { literal, setting })
    }
}

fn unknown_aug_cfg_key(key: &str) -> String {
    format!(
        "unknown key {key:?}; the keys are {} (e.g. scale=(0.08,1.0) ratio=(0.75,1.33))",
        AugSetting::KEYS.join(", ")
    )
}

impl AugmentationCfg {
    /// OpenCLIP's defaults with `entries` applied in order; when a key is
    /// given twice the last one wins, as in a Python dict.
    pub fn from_entries(entries: &[AugCfgEntry]) -> Self {
        let mut cfg = AugmentationCfg::default();
        for entry in entries {
            match &entry.setting {
                AugSetting::Scale(range) => cfg.scale = *range,
                AugSetting::Ratio(range) => cfg.ratio = *range,
                AugSetting::ColorJitter(jitter) => cfg.color_jitter = jitter.clone(),
                AugSetting::ReProb(p) => cfg.re_prob = *p,
                AugSetting::ReCount(count) => cfg.re_count = *count,
                AugSetting::UseTimm(yes) => cfg.use_timm = *yes,
                AugSetting::ColorJitterProb(p) => cfg.color_jitter_prob = *p,
                AugSetting::GrayScaleProb(p) => cfg.gray_scale_prob = *p,
            }
        }
        cfg
    }

    /// Reads `key=value` items from one text, separated by white space
    /// outside brackets (`scale=(0.5, 1.0) gray_scale_prob=0.2`); empty text
    /// gives OpenCLIP's defaults. Errors name `--aug-cfg` and the item.
    pub fn parse(text: &str) -> Result<Self> {
        let entries = split_items(text)
            .into_iter()
            .map(|item| AugCfgEntry::parse(item).map_err(|why| anyhow!("--aug-cfg {item}: {why}")))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self::from_entries(&entries))
    }

    /// OpenCLIP's warning for keys its own transform (without `use_timm`)
    /// leaves unread, in its words: `ratio`, `re_prob`, `re_count`, and
    /// `color_jitter` without a `color_jitter_prob`. (Its list also names
    /// the colour-jitter keys when the jitter is on, though its transform
    /// reads them then; this one names only the unread ones.)
    pub fn unused_without_timm_warning(&self) -> Option<String> {
        let jitter_off = !self.color_jitter_prob.is_some_and(|p| p > 0.0);
        let unused: Vec<String> = [
            ("ratio", self.ratio.is_some()),
            ("color_jitter", self.color_jitter.is_some() && jitter_off),
            ("re_prob", self.re_prob.is_some()),
            ("re_count", self.re_count.is_some()),
        ]
        .iter()
        .filter(|(_, set)| *set && !self.use_timm)
        .map(|(key, _)| format!("'{key}'"))
        .collect();
        (!unused.is_empty()).then(|| {
            format!(
                "Unused augmentation cfg items, specify `use_timm` to use ([{}]).",
                unused.join(", ")
            )
        })
    }
}

/// Splits `text` at runs of white space that are not inside `(...)` or
/// `[...]`.
fn split_items(text: &str) -> Vec<&str> {
    let mut items = Vec::new();
    let mut depth = 0usize;
    let mut start = None;
    for (index, c) in text.char_indices() {
        match c {
            '(' | '[' => depth += 1,
            ')' | ']' => depth = depth.saturating_sub(1),
            _ => {}
        }
        if c.is_whitespace() && depth == 0 {
            if let Some(begin) = start.take() {
                items.push(&text[begin..index]);
            }
        } else if start.is_none() {
            start = Some(index);
        }
    }
    if let Some(begin) = start {
        items.push(&text[begin..]);
    }
    items
}

/// Colour-jitter strengths as torchvision's `ColorJitter` takes them; each
/// becomes a range of factors (hue: of shifts) that one factor is drawn from.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct JitterStrengths {
    pub brightness: f64,
    pub contrast: f64,
    pub saturation: f64,
    pub hue: f64,
}

/// What OpenCLIP's own (non-timm) training transform takes from the config,
/// checked.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct CheckedAugmentation {
    pub scale: (f64, f64),
    /// The jitter strengths and the probability of applying them, when the
    /// jitter is on.
    pub color_jitter: Option<(JitterStrengths, f64)>,
    /// Probability of grey-scale conversion (0 when off).
    pub gray_scale_prob: f64,
}

impl AugmentationCfg {
    /// Checks the settings against OpenCLIP's own training transform:
    /// `use_timm=True` and values OpenCLIP would reject are errors naming
    /// `--aug-cfg`. Keys that transform does not read are accepted, as
    /// OpenCLIP accepts them (see
    /// [`unused_without_timm_warning`](Self::unused_without_timm_warning)).
    pub(super) fn check(&self) -> Result<CheckedAugmentation> {
        if self.use_timm {
            bail!(
                "--aug-cfg use_timm=True: timm's augmentation pipeline is Python code that \
                 clipflow does not carry; leave use_timm out to get OpenCLIP's own augmentations"
            );
        }
        let (low, high) = self.scale;
        if !(low.is_finite() && high.is_finite() && 0.0 <= low && low <= high) {
            bail!("--aug-cfg scale must be (low, high) with 0 <= low <= high, got ({low}, {high})");
        }
        let color_jitter = match (&self.color_jitter, self.color_jitter_prob) {
            (None, Some(p)) if p > 0.0 => bail!(
                "--aug-cfg color_jitter_prob needs color_jitter=(brightness, contrast, \
                 saturation, hue), e.g. color_jitter=(0.4,0.4,0.4,0.1)"
            ),
            (Some(strengths), Some(p)) if p > 0.0 => Some((
                checked_jitter_strengths(strengths)?,
                checked_probability("color_jitter_prob", Some(p))?,
            )),
            // Off: no jitter asked for, or a probability of 0.
            (_, probability) => {
                checked_probability("color_jitter_prob", probability)?;
                None
            }
        };
        Ok(CheckedAugmentation {
            scale: self.scale,
            color_jitter,
            gray_scale_prob: checked_probability("gray_scale_prob", self.gray_scale_prob)?,
        })
    }
}

/// A probability in [0, 1]; `None` is 0 (off).
fn checked_probability(key: &str, probability: Option<f64>) -> Result<f64> {
    match probability {
        None => Ok(0.0),
        Some(p) if (0.0..=1.0).contains(&p) => Ok(p),
        Some(p) => bail!("--aug-cfg {key} must be a probability in [0, 1], got {p}"),
    }
}

/// The four strengths OpenCLIP requires once the jitter is on, each
/// non-negative and hue at most 0.5 (torchvision's bounds).
fn checked_jitter_strengths(strengths: &[f64]) -> Result<JitterStrengths> {
    let &[brightness, contrast, saturation, hue] = strengths else {
        bail!(
            "--aug-cfg color_jitter must have 4 values (brightness, contrast, saturation, hue) \
             when color_jitter_prob is set, got {strengths:?}"
        );
    };
    if strengths.iter().any(|s| !(s.is_finite() && *s >= 0.0)) {
        bail!("--aug-cfg color_jitter values must be non-negative numbers, got {strengths:?}");
    }
    if hue > 0.5 {
        bail!("--aug-cfg color_jitter hue must be at most 0.5, got {hue}");
    }
    Ok(JitterStrengths {
        brightness,
        contrast,
        saturation,
        hue,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_only_timm_reads_get_open_clips_warning() {
        let cfg = AugmentationCfg::parse("scale=(0.9,1.0) ratio=(0.75,1.33) re_count=2").unwrap();
        assert_eq!(
            cfg.unused_without_timm_warning().as_deref(),
            Some(
                "Unused augmentation cfg items, specify `use_timm` to use (['ratio', 're_count'])."
            )
        );
        let jitter = AugmentationCfg::parse("color_jitter=(0.4,0.4,0.4,0.1) re_prob=0.25").unwrap();
        assert_eq!(
            jitter.unused_without_timm_warning().as_deref(),
            Some("Unused augmentation cfg items, specify `use_timm` to use (['color_jitter', 're_prob']).")
        );
        let used = AugmentationCfg::parse(
            "scale=(0.5,1.0) gray_scale_prob=0.2 color_jitter=(0.4,0.4,0.4,0.1) color_jitter_prob=0.8",
        )
        .unwrap();
        assert_eq!(used.unused_without_timm_warning(), None);
    }

    #[test]
    fn parse_splits_items_outside_brackets_and_the_last_key_wins() {
        let cfg = AugmentationCfg::parse(
            " scale=(0.5, 0.6)  color_jitter=[0.4, 0.4, 0.4, 0.1] gray_scale_prob=0.2 scale=(0.7,0.8)",
        )
        .unwrap();
        let expected = AugmentationCfg {
            scale: (0.7, 0.8),
            color_jitter: Some(vec![0.4, 0.4, 0.4, 0.1]),
            gray_scale_prob: Some(0.2),
            ..AugmentationCfg::default()
        };
        assert_eq!(cfg, expected);
        assert_eq!(
            AugmentationCfg::parse("  ").unwrap(),
            AugmentationCfg::default()
        );
    }

    #[test]
    fn parse_errors_name_the_item() {
        for (text, part) in [
            (
                "scale=(0.5,0.6) flip=1",
                "--aug-cfg flip=1: unknown key \"flip\"",
            ),
            (
                "gray_scale_prob=2",
                "--aug-cfg gray_scale_prob=2: gray_scale_prob must be",
            ),
            ("scale", "--aug-cfg scale: expected key=value"),
            (
                "use_timm=true",
                "--aug-cfg use_timm=true: value of use_timm",
            ),
        ] {
            let message = format!("{:#}", AugmentationCfg::parse(text).unwrap_err());
            assert!(message.contains(part), "{text:?}: {message}");
        }
    }
}
