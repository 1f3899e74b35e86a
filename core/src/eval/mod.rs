//! Evaluation maths, as OpenCLIP's `open_clip_train.train.evaluate` and
//! `open_clip_train.zero_shot` compute it. This module owns
//!
//! - the validation metrics over a `--val-data` set: CLIP loss accumulated
//!   per batch, image<->text retrieval ranks and recalls: [`retrieval`];
//! - zero-shot classification: the text classifier built from class names
//!   and prompt templates, its logits, and top-1 / top-5 accuracy with
//!   OpenCLIP's metric names: [`zero_shot`];
//! - OpenAI's ImageNet class names and prompt templates: [`imagenet`].
//!
//! Everything here works on features the caller's model produced; the model,
//! the data loading and the scheduling of evaluations live elsewhere. The
//! metrics of one evaluation, in OpenCLIP's order, are the zero-shot ones
//! (`imagenet-val` then `imagenet-v2`) followed by
//! [`retrieval::ValidationMetrics::finish`]'s.

pub mod imagenet;
pub mod retrieval;
pub mod zero_shot;

/// Whether OpenCLIP evaluates after `epoch` (completed epochs) given a
/// `--val-frequency` or `--zeroshot-frequency` of `frequency` and `--epochs`
/// `epochs`: never for frequency 0, else every `frequency` epochs and after
/// the last.
pub fn evaluation_due(epoch: u64, frequency: u64, epochs: u64) -> bool {
    frequency != 0 && (epoch % frequency == 0 || epoch == epochs)
}

#[cfg(test)]
mod tests {
    use super::evaluation_due;

    #[test]
    fn evaluations_follow_the_frequency_and_the_last_epoch() {
        let due: Vec<u64> = (0..=7)
            .filter(|&epoch| evaluation_due(epoch, 3, 7))
            .collect();
        assert_eq!(due, [0, 3, 6, 7]);
        assert!(!(0..=7).any(|epoch| evaluation_due(epoch, 0, 7)));
    }
}
