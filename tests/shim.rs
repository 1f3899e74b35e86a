//! The C++ shim: autocast control per device type and dtype, and the fused
//! AdamW step checked against `torch.optim.AdamW(fused=True)`.

mod common;

use clipflow_core::shim::{
    autocast_dtype, fused_adamw_step, is_autocast_enabled, set_autocast_dtype, AdamWConfig,
    AutocastGuard,
};
use tch::{Device, Kind, Tensor};

fn matmul_kind() -> Kind {
    let a = Tensor::ones([2, 3], (Kind::Float, Device::Cpu));
    let b = Tensor::ones([3, 4], (Kind::Float, Device::Cpu));
    a.matmul(&b).kind()
}

#[test]
fn autocast_guard_lowers_cpu_matmul_to_bf16_and_restores_state() {
    // Autocast state is per thread and each test runs on its own thread.
    set_autocast_dtype(Device::Cpu, Kind::Half).unwrap();
    assert_eq!(autocast_dtype(Device::Cpu).unwrap(), Kind::Half);
    assert!(!is_autocast_enabled(Device::Cpu).unwrap());
    assert_eq!(matmul_kind(), Kind::Float);

    {
        let _guard = AutocastGuard::new(Device::Cpu, Kind::BFloat16).unwrap();
        assert!(is_autocast_enabled(Device::Cpu).unwrap());
        assert_eq!(autocast_dtype(Device::Cpu).unwrap(), Kind::BFloat16);
        assert_eq!(matmul_kind(), Kind::BFloat16);
    }

    assert!(!is_autocast_enabled(Device::Cpu).unwrap());
    assert_eq!(autocast_dtype(Device::Cpu).unwrap(), Kind::Half);
    assert_eq!(matmul_kind(), Kind::Float);
}

#[test]
fn autocast_rejects_dtypes_it_cannot_lower_to() {
    let error = AutocastGuard::new(Device::Cpu, Kind::Int64).err().unwrap();
    assert!(error.to_string().contains("Int64"), "{error}");
    assert!(!is_autocast_enabled(Device::Cpu).unwrap());
}

const STEPS: usize = 3;
const SHAPES: [&[i64]; 3] = [&[4, 3], &[5], &[2, 2, 3]];
const CONFIG: AdamWConfig = AdamWConfig {
    lr: 0.01,
    beta1: 0.9,
    beta2: 0.98,
    eps: 1e-6,
    weight_decay: 0.2,
};

/// Loads `init.safetensors` (params `param.{i}`, grads `grad.{step}.{i}`),
/// runs AdamW(fused=True) for the given steps and writes the final params,
/// moments and step counters to `out.safetensors`.
const ORACLE_ADAMW: &str = r#"
import sys, torch
from safetensors.torch import load_file, save_file
init_path, out_path, steps, lr, beta1, beta2, eps, wd = sys.argv[1:]
init = load_file(init_path)
count = sum(1 for k in init if k.startswith("param."))
params = [init[f"param.{i}"].clone().requires_grad_() for i in range(count)]
opt = torch.optim.AdamW(params, lr=float(lr), betas=(float(beta1), float(beta2)),
                        eps=float(eps), weight_decay=float(wd), fused=True)
for step in range(int(steps)):
    for i, p in enumerate(params):
        p.grad = init[f"grad.{step}.{i}"].clone()
    opt.step()
out = {}
for i, p in enumerate(params):
    state = opt.state[p]
    out[f"param.{i}"] = p.detach()
    out[f"exp_avg.{i}"] = state["exp_avg"]
    out[f"exp_avg_sq.{i}"] = state["exp_avg_sq"]
    out[f"step.{i}"] = state["step"].reshape(1)
save_file(out, out_path)
"#;

#[test]
fn fused_adamw_on_cpu_matches_torch_adamw_fused() {
    tch::manual_seed(7);
    let zeros = |shape: &[i64]| Tensor::zeros(shape, (Kind::Float, Device::Cpu));
    let randn = |shape: &[i64]| Tensor::randn(shape, (Kind::Float, Device::Cpu));
    let initial: Vec<Tensor> = SHAPES.iter().map(|s| randn(s)).collect();
    let grads: Vec<Vec<Tensor>> = (0..STEPS)
        .map(|_| SHAPES.iter().map(|s| randn(s)).collect())
        .collect();

    let dir = tempfile::tempdir().unwrap();
    let init_path = dir.path().join("init.safetensors");
    let out_path = dir.path().join("out.safetensors");
    let mut named: Vec<(String, &Tensor)> = initial
        .iter()
        .enumerate()
        .map(|(i, t)| (format!("param.{i}"), t))
        .collect();
    for (step, step_grads) in grads.iter().enumerate() {
        named.extend(
            step_grads
                .iter()
                .enumerate()
                .map(|(i, t)| (format!("grad.{step}.{i}"), t)),
        );
    }
    Tensor::write_safetensors(&named, &init_path).unwrap();
    let args = [
        init_path.to_str().unwrap().to_string(),
        out_path.to_str().unwrap().to_string(),
        STEPS.to_string(),
        CONFIG.lr.to_string(),
        CONFIG.beta1.to_string(),
        CONFIG.beta2.to_string(),
        CONFIG.eps.to_string(),
        CONFIG.weight_decay.to_string(),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    common::run_oracle(ORACLE_ADAMW, &args);

    // Params require grad, as a model's do: the step must run outside autograd.
    let mut params: Vec<Tensor> = initial
        .iter()
        .map(|t| t.copy().set_requires_grad(true))
        .collect();
    let mut exp_avgs: Vec<Tensor> = SHAPES.iter().map(|s| zeros(s)).collect();
    let mut exp_avg_sqs: Vec<Tensor> = SHAPES.iter().map(|s| zeros(s)).collect();
    let mut steps: Vec<Tensor> = SHAPES.iter().map(|_| zeros(&[])).collect();
    for step_grads in &grads {
        fused_adamw_step(
            &mut params,
            step_grads,
            &mut exp_avgs,
            &mut exp_avg_sqs,
            &mut steps,
            &CONFIG,
        )
        .unwrap();
    }

    let expected: std::collections::HashMap<String, Tensor> = Tensor::read_safetensors(&out_path)
        .unwrap()
        .into_iter()
        .collect();
    // Both sides run libtorch's same elementwise CPU kernel on the same fp32
    // inputs, so they should agree bit for bit; 1e-6 on values of order 1
    // (a few fp32 ulps, eps = 1.2e-7) only allows for a different vector
    // width. A wrong beta, bias correction or decay moves params by > 1e-4.
    let close = |name: &str, actual: &Tensor| {
        let diff = (actual - &expected[name]).abs().max().double_value(&[]);
        assert!(diff <= 1e-6, "{name}: max abs diff {diff}");
    };
    for i in 0..SHAPES.len() {
        close(&format!("param.{i}"), &params[i].detach());
        close(&format!("exp_avg.{i}"), &exp_avgs[i]);
        close(&format!("exp_avg_sq.{i}"), &exp_avg_sqs[i]);
        close(&format!("step.{i}"), &steps[i].reshape([1]));
        assert_eq!(steps[i].double_value(&[]), STEPS as f64);
        let moved = (&params[i] - &initial[i]).abs().max().double_value(&[]);
        assert!(moved > 1e-3, "param.{i} barely moved: {moved}");
    }
}

#[test]
fn fused_adamw_rejects_mismatched_inputs_with_clear_errors() {
    let zeros = |shape: &[i64], kind: Kind| Tensor::zeros(shape, (kind, Device::Cpu));
    let step = || vec![zeros(&[], Kind::Float)];

    // Caught in Rust: a grad of another shape would be read out of bounds.
    let error = fused_adamw_step(
        &mut [zeros(&[3], Kind::Float)],
        &[zeros(&[2], Kind::Float)],
        &mut [zeros(&[3], Kind::Float)],
        &mut [zeros(&[3], Kind::Float)],
        &mut step(),
        &CONFIG,
    )
    .unwrap_err();
    assert!(error.to_string().contains("grads[0]"), "{error}");

    let error = fused_adamw_step(
        &mut [zeros(&[3], Kind::Float)],
        &[],
        &mut [zeros(&[3], Kind::Float)],
        &mut [zeros(&[3], Kind::Float)],
        &mut step(),
        &CONFIG,
    )
    .unwrap_err();
    assert!(error.to_string().contains("0 grads"), "{error}");

    let error = fused_adamw_step(
        &mut [zeros(&[3], Kind::Float)],
        &[zeros(&[3], Kind::Float)],
        &mut [zeros(&[3], Kind::Float)],
        &mut [zeros(&[3], Kind::Float)],
        &mut [zeros(&[2], Kind::Float)],
        &CONFIG,
    )
    .unwrap_err();
    assert!(error.to_string().contains("state_steps[0]"), "{error}");

    // Raised as a C++ exception inside libtorch (no kernel for integer
    // params) and returned as an error instead of aborting.
    let error = fused_adamw_step(
        &mut [zeros(&[3], Kind::Int64)],
        &[zeros(&[3], Kind::Int64)],
        &mut [zeros(&[3], Kind::Int64)],
        &mut [zeros(&[3], Kind::Int64)],
        &mut step(),
        &CONFIG,
    )
    .unwrap_err();
    let message = format!("{error:#}");
    assert!(message.contains("fused AdamW step: libtorch:"), "{message}");
}
