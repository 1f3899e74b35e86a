//! Learning-rate schedules equal OpenCLIP's: for a grid of settings the rate
//! assigned before every loader batch of a run matches the one
//! `open_clip_train`'s scheduler assigns, walking batches as
//! `train_one_epoch` does.
//!
//! Tolerance: 1e-12 relative. Both sides evaluate the same f64 formulas in
//! the same order with the same libm, so the values agree to the last bit;
//! the margin only absorbs a last-digit difference in decimal JSON parsing.

mod common;

use clipflow_core::train::schedule::{scheduler_step, LrSchedule, LrScheduleKind, ScheduleFlags};
use serde_json::{json, Value};

const RELATIVE_TOLERANCE: f64 = 1e-12;

fn kind_name(kind: LrScheduleKind) -> &'static str {
    match kind {
        LrScheduleKind::Cosine => "cosine",
        LrScheduleKind::Const => "const",
        LrScheduleKind::ConstCooldown => "const-cooldown",
    }
}

/// (flags, loader batches per epoch) for every combination tried.
fn grid() -> Vec<(ScheduleFlags, u64)> {
    let mut cases = Vec::new();
    // (batches, accum): whole epochs, accumulation with a leftover batch
    // (7 / 2), and a short epoch.
    for (num_batches, accum_freq) in [(10, 1), (7, 2), (5, 1)] {
        // warmup 0, within the run, equal to the (7, 2) run's 9 steps, longer than any run
        for warmup in [0, 4, 9, 50] {
            let base = ScheduleFlags {
                kind: LrScheduleKind::Cosine,
                lr: 5.0e-4,
                warmup,
                epochs: 3,
                epochs_cooldown: None,
                accum_freq,
                lr_cooldown_power: 1.0,
                lr_cooldown_end: 0.0,
            };
            cases.push((base.clone(), num_batches));
            cases.push((
                ScheduleFlags {
                    kind: LrScheduleKind::Const,
                    ..base.clone()
                },
                num_batches,
            ));
            for epochs_cooldown in [0, 1, 3] {
                for lr_cooldown_power in [1.0, 2.0, 0.5] {
                    for lr_cooldown_end in [0.0, 1.0e-5] {
                        let flags = ScheduleFlags {
                            kind: LrScheduleKind::ConstCooldown,
                            epochs_cooldown: Some(epochs_cooldown),
                            lr_cooldown_power,
                            lr_cooldown_end,
                            ..base.clone()
                        };
                        cases.push((flags, num_batches));
                    }
                }
            }
        }
    }
    cases
}

#[test]
fn every_step_matches_open_clip() {
    let cases = grid();
    let request: Vec<Value> = cases
        .iter()
        .map(|(flags, num_batches)| {
            json!({
                "scheduler": kind_name(flags.kind),
                "lr": flags.lr,
                "warmup": flags.warmup,
                "epochs": flags.epochs,
                "epochs_cooldown": flags.epochs_cooldown,
                "accum_freq": flags.accum_freq,
                "num_batches": num_batches,
                "lr_cooldown_power": flags.lr_cooldown_power,
                "lr_cooldown_end": flags.lr_cooldown_end,
            })
        })
        .collect();
    let request = serde_json::to_string(&request).unwrap();
    let output = common::run_oracle(include_str!("oracle/train_schedule.py"), &[&request]);
    let expected: Vec<Vec<Option<f64>>> = serde_json::from_str(&output).unwrap();
    assert_eq!(expected.len(), cases.len());

    let mut compared = 0;
    let mut open_clip_failures = 0;
    for ((flags, num_batches), expected) in cases.iter().zip(&expected) {
        let schedule = LrSchedule::from_flags(flags, *num_batches).unwrap();
        let mut batches = 0;
        for epoch in 0..flags.epochs {
            for batch in 0..*num_batches {
                let step = scheduler_step(*num_batches, flags.accum_freq, epoch, batch).unwrap();
                let ours = schedule.lr_at(step);
                let case = format!(
                    "{flags:?}, {num_batches} batches, epoch {epoch} batch {batch} (step {step})"
                );
                match expected[batches] {
                    Some(theirs) => {
                        let scale = theirs.abs().max(f64::MIN_POSITIVE);
                        assert!(
                            (ours - theirs).abs() <= RELATIVE_TOLERANCE * scale,
                            "{case}: ours {ours:e}, OpenCLIP {theirs:e}"
                        );
                        compared += 1;
                    }
                    None => {
                        // OpenCLIP divides by a zero-length decay here; only
                        // the step after the last one can get there.
                        assert_eq!(step, schedule.total_steps(), "{case}: OpenCLIP failed");
                        let end = match flags.kind {
                            LrScheduleKind::ConstCooldown => flags.lr_cooldown_end,
                            _ => 0.0,
                        };
                        assert_eq!(ours, end, "{case}: not the decay's end value");
                        open_clip_failures += 1;
                    }
                }
                batches += 1;
            }
        }
        assert_eq!(batches, expected.len(), "{flags:?}: batch count");
    }
    assert!(compared > 5000, "only {compared} rates compared");
    assert!(
        open_clip_failures > 0,
        "the zero-length decay edge was not exercised"
    );
}

#[test]
fn const_cooldown_needs_epochs_cooldown() {
    let flags = ScheduleFlags {
        kind: LrScheduleKind::ConstCooldown,
        lr: 1e-3,
        warmup: 0,
        epochs: 2,
        epochs_cooldown: None,
        accum_freq: 1,
        lr_cooldown_power: 1.0,
        lr_cooldown_end: 0.0,
    };
    let error = LrSchedule::from_flags(&flags, 10).unwrap_err().to_string();
    assert!(error.contains("--epochs-cooldown"), "{error}");

    let error = LrSchedule::from_flags(
        &ScheduleFlags {
            accum_freq: 0,
            epochs_cooldown: Some(1),
            ..flags
        },
        10,
    )
    .unwrap_err()
    .to_string();
    assert!(error.contains("--accum-freq"), "{error}");

    let error = LrSchedule::new(LrScheduleKind::Cosine, f64::NAN, 0, 10, 0, 1.0, 0.0)
        .unwrap_err()
        .to_string();
    assert!(error.contains("--lr"), "{error}");
}
