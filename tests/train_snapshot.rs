//! The snapshot of a trainer's state that the step executor hands to the
//! evaluator and the checkpointer at the end of an epoch (on the host, for
//! a CPU trainer): it holds the values of the moment it was taken, and
//! training on afterwards changes the trainer's tensors, never the
//! snapshot's.

use std::sync::Arc;

use clipflow_core::collective::SingleProcess;
use clipflow_core::loss::{ClipLoss, ClipLossOptions};
use clipflow_core::model::{Clip, ModelConfig, ModelOverrides};
use clipflow_core::train::optimizer::{Optimizer, OptimizerFlags};
use clipflow_core::train::snapshot::TrainerSnapshot;
use clipflow_core::train::trainer::{Trainer, TrainerSettings};
use tch::{nn::VarStore, Device, Kind, Tensor};

fn tiny_trainer() -> (Trainer, ModelConfig) {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/tiny-vit.json");
    let text = std::fs::read_to_string(path).unwrap();
    let config = ModelConfig::from_json(&text, path, &ModelOverrides::default()).unwrap();
    tch::manual_seed(0);
    let vs = VarStore::new(Device::Cpu);
    let model = Clip::new(&vs.root(), &config).unwrap();
    let named: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    let optimizer = Optimizer::new(
        &OptimizerFlags {
            opt: "adamw".into(),
            lr: Some(1e-3),
            beta1: Some(0.9),
            beta2: Some(0.98),
            eps: Some(1e-6),
            wd: 0.2,
            momentum: None,
        },
        &named,
    )
    .unwrap();
    let loss = ClipLoss::new(ClipLossOptions::default(), Arc::new(SingleProcess));
    let settings = TrainerSettings {
        device: Device::Cpu,
        accum_freq: 1,
        grad_clip_norm: None,
        autocast: None,
        input_kind: Kind::Float,
        grad_scaler: false,
        skip_scheduler: true,
        freeze_image_bn_stats: false,
        max_non_finite_in_a_row: 5,
    };
    let trainer = Trainer::new(vs, model, optimizer, Box::new(loss), None, settings).unwrap();
    (trainer, config)
}

fn train_one_step(trainer: &mut Trainer, config: &ModelConfig, step: u64) {
    let (height, width) = config.vision_cfg.image_size.height_width();
    let images = Tensor::randn([4, 3, height, width], (Kind::Float, Device::Cpu));
    let context = config.text_cfg.context_length;
    let text = Tensor::randint_low(1, 1000, [4, context], (Kind::Int64, Device::Cpu));
    assert!(trainer.train_batch(step, &images, &text).unwrap().is_some());
}

#[test]
fn a_snapshot_keeps_its_moment_while_training_goes_on() {
    let (mut trainer, config) = tiny_trainer();
    train_one_step(&mut trainer, &config, 0);
    let snapshot = TrainerSnapshot::of(&trainer).unwrap();
    assert_eq!(snapshot.device, Device::Cpu);
    // The sum of the magnitudes of every optimiser-state tensor.
    let exp_avg_sum = |optimizer: &clipflow_core::weights::Value| -> f64 {
        let total = std::cell::Cell::new(0.0);
        let visit = |tensor: &Tensor| {
            total.set(total.get() + tensor.abs().sum(Kind::Double).double_value(&[]));
            tensor.shallow_clone()
        };
        let _ = optimizer.map_tensors(&visit);
        total.get()
    };
    let optimizer_at_snapshot = exp_avg_sum(&snapshot.optimizer);
    let at_snapshot: Vec<Tensor> = snapshot.state_dict.iter().map(|(_, t)| t.copy()).collect();

    train_one_step(&mut trainer, &config, 1);
    let now = trainer.vs.variables();
    let mut moved = 0;
    for ((name, kept), before) in snapshot.state_dict.iter().zip(&at_snapshot) {
        assert_eq!(kept.device(), Device::Cpu, "{name}");
        assert!(!kept.requires_grad(), "{name}");
        assert!(kept.equal(before), "{name} changed in the snapshot");
        if !now[name].equal(kept) {
            moved += 1;
        }
    }
    assert!(moved > 0, "the second step changed no weight");
    assert_eq!(exp_avg_sum(&snapshot.optimizer), optimizer_at_snapshot);
    assert_ne!(
        exp_avg_sum(&trainer.optimizer.state_dict()),
        optimizer_at_snapshot,
        "the optimiser state moved on"
    );
}
