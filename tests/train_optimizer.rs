//! Optimisers equal the ones OpenCLIP's `open_clip_train.main` builds (caught
//! by the oracle as main creates them): the same parameter groups for
//! several model configs, the same parameters after steps from identical
//! starting values and gradients (AdamW, timm's SGD), and a state that
//! round-trips, including OpenCLIP's own checkpointed optimizer state.
//!
//! Tolerance: 1e-6 absolute on parameters of order 1 after 4 steps. OpenCLIP
//! steps with torch's per-tensor CPU code (separate lerp, addcmul, sqrt,
//! addcdiv for AdamW; `add(alpha=)`'s fused multiply-add for SGD); clipflow
//! runs libtorch's fused AdamW kernel and separate multiply and add ops for
//! SGD. Both evaluate the same fp32 formulas in a different rounding order,
//! a few ulps (fp32 eps 1.2e-7) per step. A wrong beta, bias correction,
//! momentum or decay group moves parameters by more than 1e-5 (lr 1e-2,
//! weight decay 0.2 on values of order 1).

mod common;

use std::collections::{HashMap, HashSet};

use clipflow_core::model::visual::VisualTower;
use clipflow_core::model::{Clip, ModelConfig};
use clipflow_core::train::optimizer::{Optimizer, OptimizerFlags, OptimizerKind};
use clipflow_core::weights::{read_checkpoint, Value};
use serde::Deserialize;
use serde_json::json;
use tch::{nn::VarStore, Device, Tensor};

const TOLERANCE: f64 = 1e-6;
/// The learning rate set before each step (as a schedule would).
const LEARNING_RATES: [f64; 4] = [1e-2, 8e-3, 5e-3, 2e-3];

#[derive(Deserialize)]
struct OracleGroup {
    weight_decay: f64,
    lr: f64,
    names: Vec<String>,
}

fn config_path(file: &str) -> String {
    format!("{}/tests/data/{file}", env!("CARGO_MANIFEST_DIR"))
}

/// The model's parameters that require grad, sorted by name (clipflow's
/// variable store has no order of its own).
fn trainable_params(config_file: &str, lock_image: bool) -> (VarStore, Vec<(String, Tensor)>) {
    let path = config_path(config_file);
    let config = ModelConfig::from_json(
        &std::fs::read_to_string(&path).unwrap(),
        &path,
        &Default::default(),
    )
    .unwrap();
    let vs = VarStore::new(Device::Cpu);
    let model = Clip::new(&vs.root(), &config).unwrap();
    if lock_image {
        let VisualTower::ModifiedResNet(tower) = &model.visual else {
            panic!("{config_file}: only ResNet towers lock here");
        };
        tower.lock(0, false).unwrap();
    }
    let mut named: Vec<(String, Tensor)> = vs
        .variables()
        .into_iter()
        .filter(|(_, t)| t.requires_grad())
        .collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    (vs, named)
}

fn adamw_flags(lr: f64, wd: f64, beta2: f64, eps: f64) -> OptimizerFlags {
    OptimizerFlags {
        opt: "adamw".to_owned(),
        lr: Some(lr),
        beta1: Some(0.9),
        beta2: Some(beta2),
        eps: Some(eps),
        wd,
        momentum: None,
    }
}

fn timm_flags(opt: &str, wd: f64, momentum: Option<f64>) -> OptimizerFlags {
    OptimizerFlags {
        opt: opt.to_owned(),
        lr: None,
        beta1: None,
        beta2: None,
        eps: None,
        wd,
        momentum,
    }
}

fn last_line(output: &str) -> &str {
    output.lines().last().expect("oracle printed nothing")
}

#[test]
fn groups_match_open_clip() {
    // (config, --lock-image, main's flags, the same flags for clipflow)
    let runs = [
        (
            "tiny-vit.json",
            false,
            vec!["--wd", "0.2"],
            adamw_flags(5e-4, 0.2, 0.98, 1e-6),
        ),
        (
            "tiny-clipa-style.json",
            false,
            vec!["--wd", "0.1"],
            adamw_flags(5e-4, 0.1, 0.98, 1e-6),
        ),
        (
            "tiny-attn-pool.json",
            false,
            vec!["--wd", "0"],
            adamw_flags(5e-4, 0.0, 0.98, 1e-6),
        ),
        (
            "tiny-resnet.json",
            true,
            vec!["--lock-image"],
            adamw_flags(5e-4, 0.2, 0.999, 1e-8),
        ),
        (
            "tiny-vit.json",
            false,
            vec!["--opt", "timm/sgd", "--wd", "0.1"],
            timm_flags("timm/sgd", 0.1, None),
        ),
        (
            "tiny-clipa-style.json",
            false,
            vec!["--opt", "timm/nesterov"],
            timm_flags("timm/nesterov", 0.2, None),
        ),
        (
            "tiny-resnet.json",
            false,
            vec!["--opt", "timm/momentum", "--wd", "0"],
            timm_flags("timm/momentum", 0.0, None),
        ),
    ];
    let request: Vec<_> = runs
        .iter()
        .map(|(config, lock, args, _)| {
            let mut args = args.clone();
            if *lock {
                args.push("--lock-image");
            }
            json!({"config": config_path(config), "args": args})
        })
        .collect();
    let output = common::run_oracle(
        include_str!("oracle/train_optimizer.py"),
        &["groups", &json!(request).to_string()],
    );
    let expected: Vec<Vec<OracleGroup>> = serde_json::from_str(last_line(&output)).unwrap();

    for ((config, lock, args, flags), expected) in runs.iter().zip(&expected) {
        let (_vs, named) = trainable_params(config, *lock);
        let optimizer = Optimizer::new(flags, &named).unwrap();
        let run = format!("{config} {args:?}");
        assert_eq!(
            optimizer.groups().len(),
            expected.len(),
            "{run}: group count"
        );
        let mut optimised = 0;
        for (i, (ours, theirs)) in optimizer.groups().iter().zip(expected).enumerate() {
            assert_eq!(
                ours.weight_decay(),
                theirs.weight_decay,
                "{run}: group {i} weight decay"
            );
            assert_eq!(ours.lr(), theirs.lr, "{run}: group {i} lr");
            let our_names: HashSet<&str> = ours.param_names().collect();
            let their_names: HashSet<&str> = theirs.names.iter().map(String::as_str).collect();
            assert_eq!(our_names, their_names, "{run}: group {i} parameters");
            optimised += our_names.len();
        }
        assert_eq!(
            optimised,
            named.len(),
            "{run}: every trainable parameter in one group"
        );
        if *lock {
            assert!(
                named.iter().all(|(n, _)| !n.starts_with("visual.")),
                "{run}: the locked tower is optimised"
            );
        }
    }
}

/// Runs OpenCLIP's optimizer (built by main from `args`) and ours (from
/// `flags`) over the same random parameters and gradients and compares;
/// checks that both state forms round-trip mid-run, and that OpenCLIP's
/// checkpointed state continues in clipflow as in OpenCLIP.
fn steps_match(config_file: &str, args: &[&str], flags: &OptimizerFlags) {
    let dir = tempfile::tempdir().unwrap();
    tch::manual_seed(11);
    let (_vs, named) = trainable_params(config_file, false);
    tch::no_grad(|| {
        for (_, param) in &named {
            param.shallow_clone().copy_(&param.randn_like());
        }
    });
    let grads: Vec<HashMap<String, Tensor>> = LEARNING_RATES
        .iter()
        .map(|_| {
            named
                .iter()
                .map(|(n, p)| (n.clone(), p.randn_like()))
                .collect()
        })
        .collect();
    let mut exchange: Vec<(String, Tensor)> = named
        .iter()
        .map(|(n, p)| (format!("param.{n}"), p.detach()))
        .collect();
    for (k, step_grads) in grads.iter().enumerate() {
        exchange.extend(
            step_grads
                .iter()
                .map(|(n, g)| (format!("grad.{k}.{n}"), g.shallow_clone())),
        );
    }
    let tensors_path = dir.path().join("tensors.safetensors");
    Tensor::write_safetensors(&exchange, &tensors_path).unwrap();
    common::run_oracle(
        include_str!("oracle/train_optimizer.py"),
        &[
            "steps",
            &config_path(config_file),
            tensors_path.to_str().unwrap(),
            dir.path().to_str().unwrap(),
            &json!(LEARNING_RATES).to_string(),
            &json!(args).to_string(),
        ],
    );
    let final_params: HashMap<String, Tensor> =
        Tensor::read_safetensors(dir.path().join("final.safetensors"))
            .unwrap()
            .into_iter()
            .collect();

    // From the start, with both state forms saved halfway and resumed into
    // fresh optimizers over copies of the parameters.
    let mut optimizer = Optimizer::new(flags, &named).unwrap();
    let mut resumed: Vec<(Vec<(String, Tensor)>, Optimizer)> = Vec::new();
    for (k, lr) in LEARNING_RATES.iter().enumerate() {
        if k == LEARNING_RATES.len() / 2 {
            let state_dict = optimizer.state_dict();
            let flat = optimizer.flat_state();
            for use_state_dict in [true, false] {
                let copies = copy_params(&named);
                let mut other = Optimizer::new(flags, &copies).unwrap();
                if use_state_dict {
                    other.load_state_dict(&state_dict, None).unwrap();
                } else {
                    other.load_flat_state(&flat).unwrap();
                }
                resumed.push((copies, other));
            }
        }
        take_step(&mut optimizer, &named, &grads[k], *lr);
        for (copies, other) in &mut resumed {
            take_step(other, copies, &grads[k], *lr);
        }
    }
    assert_close(&named, &final_params, &format!("{config_file} {args:?}"));
    for (copies, _) in &resumed {
        for ((name, ours), (_, resumed)) in named.iter().zip(copies) {
            assert!(ours.equal(resumed), "{name}: a resumed optimizer diverged");
        }
    }

    // OpenCLIP's checkpoint before the last step: its weights, and its
    // optimizer state keyed by position in OpenCLIP's named_parameters()
    // order (no names), which the checkpoint's state_dict keeps. As in
    // `clipflow train --resume`, the optimizer lists the parameters in
    // clipflow's own order and reads the state in the state_dict's.
    let groups: Vec<OracleGroup> =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("groups.json")).unwrap())
            .unwrap();
    let checkpoint = read_checkpoint(&dir.path().join("before_last.pt")).unwrap();
    let torch_order: Vec<String> = checkpoint
        .state_dict
        .iter()
        .map(|(name, _)| name.clone())
        .collect();
    let weights: HashMap<String, Tensor> = checkpoint.state_dict.into_iter().collect();
    let resumed: Vec<(String, Tensor)> = named
        .iter()
        .map(|(n, _)| (n.clone(), weights[n].copy().set_requires_grad(true)))
        .collect();
    let mut optimizer = Optimizer::new(flags, &resumed).unwrap();
    let ours: Vec<&str> = optimizer
        .groups()
        .iter()
        .flat_map(|g| g.param_names())
        .collect();
    let theirs: Vec<&str> = groups
        .iter()
        .flat_map(|g| g.names.iter().map(String::as_str))
        .collect();
    assert_ne!(
        ours, theirs,
        "the orders must differ for this to test reordering"
    );
    let saved = checkpoint
        .optimizer
        .expect("checkpoint has optimizer state");
    assert_same_structure(
        &optimizer_after_one_step(flags, &named, &grads[0]).state_dict(),
        &saved,
    );
    optimizer
        .load_state_dict(&saved, Some(&torch_order))
        .unwrap();
    let last = LEARNING_RATES.len() - 1;
    take_step(&mut optimizer, &resumed, &grads[last], LEARNING_RATES[last]);
    assert_close(&resumed, &final_params, "resumed from OpenCLIP's state");
}

fn copy_params(named: &[(String, Tensor)]) -> Vec<(String, Tensor)> {
    named
        .iter()
        .map(|(n, p)| (n.clone(), p.detach().copy().set_requires_grad(true)))
        .collect()
}

/// Sets each parameter's gradient to `grads[name]` through autograd, the
/// way a backward pass leaves it, then steps at `lr`.
fn take_step(
    optimizer: &mut Optimizer,
    named: &[(String, Tensor)],
    grads: &HashMap<String, Tensor>,
    lr: f64,
) {
    optimizer.zero_grad();
    let total = named
        .iter()
        .map(|(n, p)| (p * &grads[n]).sum(tch::Kind::Float))
        .fold(Tensor::from(0f32), |a, b| a + b);
    total.backward();
    optimizer.set_lr(lr);
    optimizer.step().unwrap();
}

fn optimizer_after_one_step(
    flags: &OptimizerFlags,
    named: &[(String, Tensor)],
    grads: &HashMap<String, Tensor>,
) -> Optimizer {
    let copies = copy_params(named);
    let mut optimizer = Optimizer::new(flags, &copies).unwrap();
    take_step(&mut optimizer, &copies, grads, LEARNING_RATES[0]);
    optimizer
}

fn assert_close(named: &[(String, Tensor)], expected: &HashMap<String, Tensor>, what: &str) {
    for (name, param) in named {
        let diff = (param.detach() - &expected[name])
            .abs()
            .max()
            .double_value(&[]);
        assert!(diff <= TOLERANCE, "{what}: {name} differs by {diff}");
    }
}

fn dict_keys(value: &Value) -> Vec<String> {
    let Value::Dict(items) = value else {
        panic!("not a dict: {value:?}")
    };
    items
        .iter()
        .filter_map(|(k, _)| match k {
            Value::Str(s) if s != "param_names" => Some(s.clone()),
            _ => None,
        })
        .collect()
}

/// clipflow's state_dict has torch's keys: the same group keys, in order
/// (plus param_names), and the same per-parameter state keys.
fn assert_same_structure(ours: &Value, theirs: &Value) {
    let (Some(Value::List(our_groups)), Some(Value::List(their_groups))) =
        (ours.get("param_groups"), theirs.get("param_groups"))
    else {
        panic!("param_groups missing");
    };
    for (a, b) in our_groups.iter().zip(their_groups) {
        assert_eq!(dict_keys(a), dict_keys(b), "param group keys");
    }
    let (Some(Value::Dict(our_state)), Some(Value::Dict(their_state))) =
        (ours.get("state"), theirs.get("state"))
    else {
        panic!("state missing");
    };
    assert_eq!(
        dict_keys(&our_state[0].1),
        dict_keys(&their_state[0].1),
        "parameter state keys"
    );
}

#[test]
fn adamw_steps_match_torch() {
    steps_match(
        "tiny-vit.json",
        &["--wd", "0.2", "--beta2", "0.95", "--eps", "1e-5"],
        &adamw_flags(5e-4, 0.2, 0.95, 1e-5),
    );
}

#[test]
fn timm_sgd_steps_match_timm() {
    steps_match(
        "tiny-vit.json",
        &["--opt", "timm/sgd", "--wd", "0.2", "--momentum", "0.8"],
        &timm_flags("timm/sgd", 0.2, Some(0.8)),
    );
}

#[test]
fn unsupported_optimizers_are_refused_by_name() {
    for opt in ["timm/lamb", "sgd", "timm/lookahead_sgd", "adam"] {
        let error = OptimizerKind::from_opt_flag(opt).unwrap_err().to_string();
        assert!(
            error.contains(&format!("--opt {opt}")) && error.contains("timm/sgd"),
            "{error}"
        );
    }
    assert_eq!(
        OptimizerKind::from_opt_flag("AdamW").unwrap(),
        OptimizerKind::AdamW
    );
    assert_eq!(
        OptimizerKind::from_opt_flag("timm/momentum").unwrap(),
        OptimizerKind::Sgd { nesterov: false }
    );

    let (_vs, named) = trainable_params("tiny-vit.json", false);
    let error = Optimizer::new(&timm_flags("timm/sgd", 0.2, Some(0.0)), &named)
        .unwrap_err()
        .to_string();
    assert!(error.contains("--momentum"), "{error}");
    let mut missing_beta = adamw_flags(1e-3, 0.2, 0.98, 1e-6);
    missing_beta.beta1 = None;
    let error = Optimizer::new(&missing_beta, &named)
        .unwrap_err()
        .to_string();
    assert!(error.contains("--beta1"), "{error}");

    // An AdamW state does not load into SGD.
    let adamw = Optimizer::new(&adamw_flags(1e-3, 0.2, 0.98, 1e-6), &named).unwrap();
    let mut sgd = Optimizer::new(&timm_flags("timm/sgd", 0.2, None), &named).unwrap();
    let error = sgd
        .load_state_dict(&adamw.state_dict(), None)
        .unwrap_err()
        .to_string();
    assert!(error.contains("not SGD's"), "{error}");
}
