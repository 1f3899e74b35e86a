//! Reading the results of a training run beside OpenCLIP's: TensorBoard
//! scalar series (as tests/oracle/train_parity.py's `scalars` prints them)
//! and weight comparisons (its `compare`), with the tolerances fp32
//! rounding explains.

use serde_json::Value;

pub fn series(scalars: &Value, tag: &str) -> Vec<(i64, f64)> {
    scalars[tag]
        .as_array()
        .unwrap_or_else(|| panic!("no TensorBoard scalar {tag}"))
        .iter()
        .map(|point| (point[0].as_i64().unwrap(), point[1].as_f64().unwrap()))
        .collect()
}

pub fn assert_series_close(case: &str, tag: &str, ours: &Value, theirs: &Value, relative: f64) {
    let (ours, theirs) = (series(ours, tag), series(theirs, tag));
    let steps = |s: &[(i64, f64)]| s.iter().map(|p| p.0).collect::<Vec<_>>();
    assert_eq!(steps(&ours), steps(&theirs), "{case} {tag}: steps");
    for ((step, our), (_, their)) in ours.iter().zip(&theirs) {
        assert!(
            (our - their).abs() <= relative * their.abs(),
            "{case} {tag} at step {step}: clipflow {our}, OpenCLIP {their}"
        );
    }
}

/// Every tensor of a `compare` result within what fp32 rounding explains.
pub fn assert_weights_close(name: &str, weights: &Value, lr_sum: f64) {
    assert!(
        weights["same_keys"].as_bool().unwrap(),
        "{}: state_dict keys differ",
        name
    );
    for (tensor, numbers) in weights["tensors"].as_object().unwrap() {
        let diff = numbers["diff"].as_f64().unwrap();
        let numel = numbers["numel"].as_u64().unwrap();
        let over = numbers["over_1e-5"].as_u64().unwrap();
        let moved = numbers["moved"].as_f64().unwrap();
        // Adam moves each element by at most about lr per step, whatever
        // its gradient, so two runs can differ in any element by at most
        // about twice the sum of the learning rates.
        assert!(
            diff <= 2.0 * lr_sum,
            "{name}: {tensor} differs by {diff} (training moved it by {moved})"
        );
        // An attention key bias has no effect on the softmax, so its
        // gradient is pure rounding noise, which Adam normalises to steps of
        // either sign: nothing more to hold it to.
        if tensor.ends_with("in_proj_bias[k]") || tensor.ends_with("k_proj.bias") {
            continue;
        }
        // Elsewhere fp32 rounding (the two sides sum a batch in different
        // orders) changes Adam's normalised step noticeably only in an
        // element whose gradient is itself near zero, and then in that
        // element alone; everywhere else the weights agree to 1e-5 (weights
        // are O(0.01..1) and moved by up to ~lr per step). A mistake in the
        // maths moves many elements: at most one in a thousand (and one in
        // any tensor) may differ by more than 1e-5.
        assert!(
            over <= 1 + numel / 1000,
            "{name}: {over} of {numel} elements of {tensor} differ by more than 1e-5 (up to \
             {diff}; training moved it by up to {moved})"
        );
    }
}
