//! OpenCLIP's `AugmentationCfg`: the `--aug-cfg` settings of the training
//! transform, with OpenCLIP's defaults, and the check of which of them the
//! training transform can honour.

use anyhow::{bail, Result};

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
    /// Checks the settings against OpenCLIP's own training transform: the
    /// timm-only keys (which OpenCLIP ignores with a warning unless
    /// `use_timm=True`) and values OpenCLIP would reject are errors naming
    /// `--aug-cfg`.
    pub(super) fn check(&self) -> Result<CheckedAugmentation> {
        if self.use_timm {
            bail!(
                "--aug-cfg use_timm=True: timm's augmentation pipeline is Python code that \
                 clipflow does not carry; leave use_timm out to get OpenCLIP's own augmentations"
            );
        }
        let timm_only = [
            ("ratio", self.ratio.is_some()),
            ("re_prob", self.re_prob.is_some()),
            ("re_count", self.re_count.is_some()),
        ];
        for (key, given) in timm_only {
            if given {
                bail!(
                    "--aug-cfg {key}: only timm's pipeline (use_timm=True) reads {key}, and \
                     clipflow has no timm pipeline; OpenCLIP's own transform ignores it, so \
                     remove it to get the same augmentations"
                );
            }
        }
        let (low, high) = self.scale;
        if !(low.is_finite() && high.is_finite() && 0.0 <= low && low <= high) {
            bail!("--aug-cfg scale must be (low, high) with 0 <= low <= high, got ({low}, {high})");
        }
        let color_jitter = match (&self.color_jitter, self.color_jitter_prob) {
            (Some(_), None) => bail!(
                "--aug-cfg color_jitter has no effect without color_jitter_prob (OpenCLIP ignores \
                 it then); add color_jitter_prob=P, e.g. color_jitter_prob=0.8, or remove it"
            ),
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
