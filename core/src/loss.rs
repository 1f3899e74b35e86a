//! Contrastive losses. `clip_loss` is OpenCLIP's `ClipLoss` on one process:
//! symmetric cross-entropy over the image-text similarity matrix.

use tch::{Kind, Reduction, Tensor};

/// Mean of the image->text and text->image cross-entropies, with the i-th
/// image matching the i-th text. Features must already be L2-normalised;
/// `logit_scale` is the exponentiated scale.
pub fn clip_loss(image_features: &Tensor, text_features: &Tensor, logit_scale: &Tensor) -> Tensor {
    let logits_per_image = logit_scale * image_features.matmul(&text_features.tr());
    let logits_per_text = logits_per_image.tr();
    let n = image_features.size()[0];
    let labels = Tensor::arange(n, (Kind::Int64, image_features.device()));
    let ce = |logits: &Tensor| {
        logits.cross_entropy_loss::<Tensor>(&labels, None, Reduction::Mean, -100, 0.0)
    };
    (ce(&logits_per_image) + ce(&logits_per_text)) / 2.0
}
