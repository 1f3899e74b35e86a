//! Losses and their gradients equal OpenCLIP's `ClipLoss` and `SigLipLoss`
//! on the same random inputs: on one process, and on 2 and 3 ranks, where
//! the oracle runs OpenCLIP in a gloo process group
//! (tests/oracle/loss_parity.py) and clipflow runs a `thread_group`.
//!
//! Tolerances (fp32): losses within 1e-6 relative. Gradients within 1e-6 of
//! the larger of 1 and the largest gradient entry of the same tensor: both
//! sides run the same libtorch kernels, but on several ranks the gradient of
//! a feature is a sum over ranks that OpenCLIP and clipflow add in different
//! orders (gloo's all-to-all then a stack-sum, or a chain of neighbour
//! exchanges, against clipflow's reduce-scatter in rank order), each addition
//! rounding at 2^-24 ~ 6e-8 of the partial sums. Those sums are at most a few
//! times the largest entry, or, for a gradient that cancels to about zero
//! (the CLIP loss's gradient w.r.t. logit_bias is exactly zero in real
//! arithmetic, the softmax being shift-invariant), made of softmax
//! probabilities of magnitude up to 1.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use clipflow_core::collective::{thread_group, Collective, SingleProcess};
use clipflow_core::loss::{
    ClipLoss, ClipLossOptions, Loss, LossInputs, SigLipDistImpl, SigLipLoss,
};
use serde_json::json;
use tch::{Kind, Tensor};

const LOSS_TOLERANCE: f64 = 1e-6;
const GRAD_TOLERANCE: f64 = 1e-6;
const BATCH_PER_RANK: i64 = 6;
const DIM: i64 = 16;

/// One loss configuration, run by every rank.
#[derive(Clone)]
struct Case {
    name: String,
    siglip: Option<SigLipDistImpl>,
    clip: ClipLossOptions,
    bias: bool,
}

fn clip_case(name: &str, local_loss: bool, gather_with_grad: bool, bias: bool) -> Case {
    Case {
        name: name.to_owned(),
        siglip: None,
        clip: ClipLossOptions {
            local_loss,
            gather_with_grad,
            cache_labels: true,
        },
        bias,
    }
}

fn siglip_case(name: &str, dist_impl: SigLipDistImpl) -> Case {
    Case {
        name: name.to_owned(),
        siglip: Some(dist_impl),
        clip: ClipLossOptions::default(),
        bias: true,
    }
}

fn dist_impl_name(dist_impl: SigLipDistImpl) -> &'static str {
    match dist_impl {
        SigLipDistImpl::Bidir => "bidir",
        SigLipDistImpl::Shift => "shift",
        SigLipDistImpl::Reduce => "reduce",
        SigLipDistImpl::Gather => "gather",
    }
}

fn case_json(case: &Case) -> serde_json::Value {
    json!({
        "name": case.name,
        "loss": if case.siglip.is_some() { "siglip" } else { "clip" },
        "local_loss": case.clip.local_loss,
        "gather_with_grad": case.clip.gather_with_grad,
        "bias": case.bias,
        "dist_impl": case.siglip.map(dist_impl_name),
    })
}

/// Rank `rank`'s inputs: unit-norm features, and the scale and bias every
/// rank shares (replicated parameters).
fn random_inputs(rank: usize) -> Vec<(String, Tensor)> {
    tch::manual_seed(100 + rank as i64);
    let unit = |t: Tensor| {
        let norm = t.norm_scalaropt_dim(2, [-1], true);
        t / norm
    };
    vec![
        (
            "image_features".to_owned(),
            unit(Tensor::randn(
                [BATCH_PER_RANK, DIM],
                (Kind::Float, tch::Device::Cpu),
            )),
        ),
        (
            "text_features".to_owned(),
            unit(Tensor::randn(
                [BATCH_PER_RANK, DIM],
                (Kind::Float, tch::Device::Cpu),
            )),
        ),
        ("logit_scale".to_owned(), Tensor::from(10.0f32)),
        ("logit_bias".to_owned(), Tensor::from(-5.0f32)),
    ]
}

fn read(path: &Path) -> HashMap<String, Tensor> {
    Tensor::read_safetensors(path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
        .into_iter()
        .collect()
}

/// clipflow's loss and gradients for every case on one rank, named as the
/// oracle names them.
fn clipflow_rank(
    collective: Arc<dyn Collective>,
    inputs: Vec<(String, Tensor)>,
    cases: &[Case],
) -> Vec<HashMap<String, Tensor>> {
    cases
        .iter()
        .map(|case| {
            let leaves: HashMap<&str, Tensor> = inputs
                .iter()
                .map(|(name, t)| (name.as_str(), t.detach().copy().set_requires_grad(true)))
                .collect();
            let loss_fn: Box<dyn Loss> = match case.siglip {
                Some(dist_impl) => Box::new(SigLipLoss::new(dist_impl, collective.clone())),
                None => Box::new(ClipLoss::new(case.clip, collective.clone())),
            };
            let loss_inputs = LossInputs {
                image_features: &leaves["image_features"],
                text_features: &leaves["text_features"],
                logit_scale: &leaves["logit_scale"],
                logit_bias: case.bias.then(|| &leaves["logit_bias"]),
                caption: None,
                teacher: None,
            };
            let mut terms = loss_fn.forward_dict(&loss_inputs).unwrap();
            let loss = terms
                .remove("contrastive_loss")
                .expect("a contrastive_loss term");
            loss.backward();
            let mut out = HashMap::from([("loss".to_owned(), loss.detach())]);
            for (name, leaf) in &leaves {
                if *name != "logit_bias" || case.bias {
                    out.insert(format!("grad.{name}"), leaf.grad());
                }
            }
            out
        })
        .collect()
}

fn max_abs(t: &Tensor) -> f64 {
    t.abs().max().double_value(&[])
}

/// Runs `cases` on `world_size` ranks on both sides and compares every
/// rank's loss and gradients.
fn compare(world_size: usize, cases: &[Case]) {
    let dir = tempfile::tempdir().unwrap();
    let inputs: Vec<Vec<(String, Tensor)>> = (0..world_size).map(random_inputs).collect();
    for (rank, rank_inputs) in inputs.iter().enumerate() {
        Tensor::write_safetensors(
            rank_inputs,
            dir.path().join(format!("inputs_rank{rank}.safetensors")),
        )
        .unwrap();
    }
    let cases_json = serde_json::Value::Array(cases.iter().map(case_json).collect());
    std::fs::write(dir.path().join("cases.json"), cases_json.to_string()).unwrap();
    common::run_oracle(
        include_str!("oracle/loss_parity.py"),
        &[&world_size.to_string(), dir.path().to_str().unwrap()],
    );

    let ours: Vec<Vec<HashMap<String, Tensor>>> = if world_size == 1 {
        vec![clipflow_rank(
            Arc::new(SingleProcess),
            inputs.into_iter().next().unwrap(),
            cases,
        )]
    } else {
        let group = thread_group(world_size).unwrap();
        std::thread::scope(|scope| {
            let handles: Vec<_> = group
                .into_iter()
                .zip(inputs)
                .map(|(rank, rank_inputs)| {
                    scope.spawn(move || clipflow_rank(Arc::new(rank), rank_inputs, cases))
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        })
    };

    for (rank, rank_results) in ours.iter().enumerate() {
        for (case, result) in cases.iter().zip(rank_results) {
            let what = format!("world size {world_size}, rank {rank}, {}", case.name);
            let expected = read(
                &dir.path()
                    .join(format!("{}_rank{rank}.safetensors", case.name)),
            );
            assert_eq!(
                expected.len(),
                result.len(),
                "{what}: outputs differ: oracle {:?}",
                expected.keys()
            );
            for (name, want) in &expected {
                let got = &result[name];
                let diff = max_abs(&(got - want));
                let scale = max_abs(want);
                let bound = if name == "loss" {
                    LOSS_TOLERANCE * scale
                } else {
                    GRAD_TOLERANCE * scale.max(1.0)
                };
                eprintln!("{what}: {name} differs by {diff:e} (scale {scale:e})");
                assert!(
                    diff <= bound,
                    "{what}: {name} differs by {diff} (largest oracle entry {scale})"
                );
            }
        }
    }
}

#[test]
fn single_process_matches_open_clip() {
    compare(
        1,
        &[
            clip_case("clip", false, false, false),
            clip_case("clip_bias", false, false, true),
            siglip_case("siglip", SigLipDistImpl::Bidir),
        ],
    );
}

#[test]
fn two_ranks_match_open_clip_gloo_group() {
    compare(
        2,
        &[
            clip_case("clip", false, false, false),
            clip_case("clip_gather_with_grad", false, true, false),
            clip_case("clip_local", true, false, false),
            clip_case("clip_local_gather_with_grad", true, true, false),
            clip_case("clip_bias", false, false, true),
            siglip_case("siglip_bidir", SigLipDistImpl::Bidir),
        ],
    );
}

/// Three ranks tell the SigLIP exchanges apart (on two they all reduce to
/// "the other rank") and give the reduce-scatter a rank in the middle.
#[test]
fn three_ranks_match_open_clip_gloo_group() {
    compare(
        3,
        &[
            clip_case("clip_gather_with_grad", false, true, false),
            clip_case("clip_local_gather_with_grad", true, true, true),
            siglip_case("siglip_bidir", SigLipDistImpl::Bidir),
            siglip_case("siglip_shift", SigLipDistImpl::Shift),
            siglip_case("siglip_reduce", SigLipDistImpl::Reduce),
            siglip_case("siglip_gather", SigLipDistImpl::Gather),
        ],
    );
}

#[test]
fn an_unknown_loss_dist_impl_is_refused_by_name() {
    let bad_impl = "ring".parse::<SigLipDistImpl>().unwrap_err().to_string();
    assert!(bad_impl.contains("--loss-dist-impl ring"), "{bad_impl}");
}

#[test]
fn thread_group_refuses_mismatched_shapes() {
    let group = thread_group(2).unwrap();
    let errors: Vec<String> = std::thread::scope(|scope| {
        let handles: Vec<_> = group
            .into_iter()
            .map(|rank| {
                scope.spawn(move || {
                    let rows = 2 + rank.rank() as i64;
                    rank.all_gather(&Tensor::zeros([rows, 3], (Kind::Float, tch::Device::Cpu)))
                        .unwrap_err()
                        .to_string()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for error in errors {
        assert!(error.contains("rank 1 sent [3, 3]"), "{error}");
    }
}
