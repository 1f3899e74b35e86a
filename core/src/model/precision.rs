//! Low-precision weights for `--precision bf16 | fp16`, as OpenCLIP's
//! `convert_weights_to_lp` makes them: the weights and biases of
//! convolutions, linear layers and attention projections, and the bare
//! `proj` / `text_projection` matrices, are cast to bf16 or fp16; embeddings,
//! LayerNorm and BatchNorm parameters, LayerScale, logit scale and bias stay
//! fp32 (LayerNorms then compute in fp32 and cast back).

use tch::nn::VarStore;
use tch::Kind;

/// Modules whose `weight` and `bias` OpenCLIP casts: every convolution and
/// linear layer of the towers, named as in the state_dict.
const CAST_MODULES: [&str; 10] = [
    "conv1",
    "conv2",
    "conv3",
    "c_fc",
    "c_proj",
    "out_proj",
    "q_proj",
    "k_proj",
    "v_proj",
    "text_projection",
];

/// Attention projections kept as bare parameters (`nn.MultiheadAttention`).
const CAST_ATTENTION_PARAMETERS: [&str; 5] = [
    "in_proj_weight",
    "in_proj_bias",
    "q_proj_weight",
    "k_proj_weight",
    "v_proj_weight",
];

/// True for the state_dict names `convert_weights_to_lp` casts.
pub fn is_low_precision_parameter(name: &str) -> bool {
    let parts: Vec<&str> = name.split('.').collect();
    let leaf = parts[parts.len() - 1];
    let module = parts.len().checked_sub(2).map(|i| parts[i]);
    let parent = parts.len().checked_sub(3).map(|i| parts[i]);
    if CAST_ATTENTION_PARAMETERS.contains(&leaf) || leaf == "proj" || leaf == "text_projection" {
        return true;
    }
    let is_weight_or_bias = leaf == "weight" || leaf == "bias";
    let is_cast_module = module.is_some_and(|m| CAST_MODULES.contains(&m))
        || (module == Some("0") && parent == Some("downsample"));
    is_weight_or_bias && is_cast_module
}

/// Casts, in place, the variables of `vs` that OpenCLIP keeps in `kind`
/// under `--precision bf16` / `fp16`.
pub fn convert_weights_to_low_precision(vs: &VarStore, kind: Kind) {
    tch::no_grad(|| {
        for (name, mut var) in vs.variables() {
            if is_low_precision_parameter(&name) {
                let cast = var.to_kind(kind);
                var.set_data(&cast);
            }
        }
    });
}
