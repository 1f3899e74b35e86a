//! clipflow writes `torch.save` archives that torch loads with
//! `weights_only=True` and that OpenCLIP resumes from: every value kind and
//! dtype, checked value for value (tensor bytes exactly) against what
//! torch.load returns; OpenCLIP's `create_model(pretrained=epoch_1.pt)` on a
//! training checkpoint we wrote; our own reader; and atomic replacement.

mod common;

use clipflow_core::train::run_folder::checkpoint_dict;
use clipflow_core::weights::{read_checkpoint, write_torch_checkpoint, Value};
use common::model::{assert_same_features, build, config_path};
use serde_json::{json, Value as Json};
use tch::{Device, Kind, Tensor};

fn str(text: &str) -> Value {
    Value::Str(text.into())
}

/// A tensor of `kind` with varied values (both booleans, negative and
/// fractional numbers where the dtype has them).
fn varied(kind: Kind, size: &[i64]) -> Tensor {
    let numel: i64 = size.iter().product();
    let values = Tensor::arange(numel, (Kind::Double, Device::Cpu)) * 1.75 - 20.0;
    match kind {
        Kind::Bool => (Tensor::arange(numel, (Kind::Int64, Device::Cpu)).remainder(3))
            .eq(0)
            .reshape(size),
        Kind::Uint8 => values.abs().to_kind(kind).reshape(size),
        _ => values.to_kind(kind).reshape(size),
    }
}

/// Every value kind the writer takes, nested.
fn every_kind() -> Value {
    let kinds = [
        Kind::Double,
        Kind::Float,
        Kind::Half,
        Kind::BFloat16,
        Kind::Int64,
        Kind::Int,
        Kind::Int16,
        Kind::Int8,
        Kind::Uint8,
        Kind::Bool,
    ];
    let tensors: Vec<Value> = kinds
        .iter()
        .map(|&kind| Value::Tensor(varied(kind, &[2, 3])))
        .collect();
    let ints = [
        0,
        1,
        255,
        256,
        65535,
        65536,
        -1,
        -256,
        i32::MAX as i64,
        i32::MIN as i64,
        i32::MAX as i64 + 1,
        i32::MIN as i64 - 1,
        1 << 40,
        -(1 << 40),
        i64::MAX,
        i64::MIN,
    ];
    let floats = [0.0, -0.0, 0.1, -2.5, 1e300, 5e-324, f64::INFINITY, f64::NAN];
    let base = Tensor::arange(24, (Kind::Float, Device::Cpu)).reshape([4, 6]);
    Value::Dict(vec![
        (str("tensors"), Value::List(tensors)),
        (
            str("ints"),
            Value::List(ints.iter().map(|&i| Value::Int(i)).collect()),
        ),
        (
            str("floats"),
            Value::List(floats.iter().map(|&f| Value::Float(f)).collect()),
        ),
        (str("text"), str("naïve ∑ 漢字 \n\"quoted\"")),
        (str(""), str("")),
        (str("bytes"), Value::Bytes(vec![0, 1, 0x7f, 0x80, 0xff])),
        (str("no bytes"), Value::Bytes(Vec::new())),
        (
            str("flags"),
            Value::Tuple(vec![Value::Bool(true), Value::Bool(false), Value::None]),
        ),
        (
            str("tuples"),
            Value::List(
                (0..6)
                    .map(|len| Value::Tuple((0..len).map(Value::Int).collect()))
                    .collect(),
            ),
        ),
        (
            str("int keys"),
            Value::Dict(vec![
                (
                    Value::Int(0),
                    Value::Dict(vec![(str("step"), Value::Tensor(Tensor::from(3.0f32)))]),
                ),
                (Value::Int(7), Value::Dict(Vec::new())),
            ]),
        ),
        (str("empty list"), Value::List(Vec::new())),
        (
            str("scalars"),
            Value::List(
                [Kind::Float, Kind::Int64, Kind::Bool, Kind::BFloat16]
                    .iter()
                    .map(|&kind| Value::Tensor(varied(kind, &[])))
                    .collect(),
            ),
        ),
        (
            str("empty tensors"),
            Value::List(vec![
                Value::Tensor(Tensor::zeros([0], (Kind::Float, Device::Cpu))),
                Value::Tensor(Tensor::zeros([2, 0, 3], (Kind::Half, Device::Cpu))),
            ]),
        ),
        (
            str("views"),
            Value::List(vec![
                Value::Tensor(base.transpose(0, 1)),
                Value::Tensor(base.slice(1, 1, 6, 2)),
                Value::Tensor(base.select(0, 2)),
                Value::Tensor(Tensor::from(1.5f32).expand([3, 2], false)),
            ]),
        ),
        (
            str("state_dict"),
            Value::state_dict(&[
                ("b.weight".into(), varied(Kind::Float, &[3])),
                ("a.weight".into(), varied(Kind::Half, &[2, 2])),
            ]),
        ),
        // Larger than one 64 MiB copy chunk, with values varying across it.
        (
            str("large"),
            Value::Tensor(varied(Kind::Float, &[17 << 20])),
        ),
    ])
}

/// What tests/oracle/torch_save.py prints for `value`.
fn describe(value: &Value) -> Json {
    let items = |items: &[(Value, Value)]| -> Json {
        items
            .iter()
            .map(|(k, v)| json!([describe(k), describe(v)]))
            .collect()
    };
    match value {
        Value::None => json!(["NoneType"]),
        Value::Bool(_) => json!(["bool"]),
        Value::Int(_) => json!(["int"]),
        Value::Float(_) => json!(["float"]),
        Value::Str(_) => json!(["str"]),
        Value::Bytes(_) => json!(["bytes"]),
        Value::List(v) => json!(["list", v.iter().map(describe).collect::<Vec<_>>()]),
        Value::Tuple(v) => json!(["tuple", v.iter().map(describe).collect::<Vec<_>>()]),
        Value::Dict(v) => json!(["dict", items(v)]),
        Value::OrderedDict(v) => json!(["OrderedDict", items(v)]),
        Value::Tensor(t) => json!(["tensor", torch_dtype(t.kind()), t.size()]),
    }
}

fn torch_dtype(kind: Kind) -> &'static str {
    match kind {
        Kind::Double => "torch.float64",
        Kind::Float => "torch.float32",
        Kind::Half => "torch.float16",
        Kind::BFloat16 => "torch.bfloat16",
        Kind::Int64 => "torch.int64",
        Kind::Int => "torch.int32",
        Kind::Int16 => "torch.int16",
        Kind::Int8 => "torch.int8",
        Kind::Uint8 => "torch.uint8",
        Kind::Bool => "torch.bool",
        other => panic!("no test dtype {other:?}"),
    }
}

/// Asserts two values are equal exactly: same kinds, floats bit for bit,
/// tensors of the same dtype, shape and bytes. (The reader gives plain dicts
/// for ordered ones.)
fn assert_identical(written: &Value, read: &Value, at: &str) {
    match (written, read) {
        (Value::Float(a), Value::Float(b)) => assert_eq!(a.to_bits(), b.to_bits(), "{at}"),
        (Value::Tensor(a), Value::Tensor(b)) => {
            assert_eq!((a.kind(), a.size()), (b.kind(), b.size()), "{at}");
            assert!(bytes_of(a) == bytes_of(b), "{at}: tensor values differ");
        }
        (Value::List(a), Value::List(b)) | (Value::Tuple(a), Value::Tuple(b)) => {
            assert_eq!(a.len(), b.len(), "{at}");
            for (i, (a, b)) in a.iter().zip(b).enumerate() {
                assert_identical(a, b, &format!("{at}[{i}]"));
            }
        }
        (Value::Dict(a) | Value::OrderedDict(a), Value::Dict(b)) => {
            assert_eq!(a.len(), b.len(), "{at}");
            for ((ka, va), (kb, vb)) in a.iter().zip(b) {
                assert_identical(ka, kb, &format!("{at} key"));
                assert_identical(va, vb, &format!("{at}[{ka:?}]"));
            }
        }
        (a, b) => assert_eq!(format!("{a:?}"), format!("{b:?}"), "{at}"),
    }
}

fn bytes_of(tensor: &Tensor) -> Vec<u8> {
    let flat = tensor.contiguous().reshape([-1]);
    let bytes = flat.view_dtype(Kind::Uint8);
    let mut out = vec![0u8; bytes.numel()];
    bytes.copy_data_u8(&mut out, bytes.numel());
    out
}

#[test]
fn torch_loads_every_value_kind_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let ours = dir.path().join("every_kind.pt");
    let resaved = dir.path().join("resaved.pt");
    let value = every_kind();
    write_torch_checkpoint(&ours, &value).unwrap();

    let printed = common::run_oracle(
        include_str!("oracle/torch_save.py"),
        &[ours.to_str().unwrap(), resaved.to_str().unwrap()],
    );
    let loaded: Json = serde_json::from_str(&printed).unwrap();
    assert_eq!(loaded, describe(&value), "types as torch.load sees them");

    // torch.load's values, saved again by torch.save, read by our reader.
    let read = read_checkpoint(&resaved).unwrap().optimizer.unwrap();
    assert_identical(&value, &read, "value");
    // Our reader on our own file.
    let checkpoint = read_checkpoint(&ours).unwrap();
    assert!(checkpoint.state_dict.len() == 2 && checkpoint.epoch.is_none());
}

/// A training checkpoint dict we write as `epoch_1.pt` is what
/// `open_clip.create_model(pretrained=...)` loads strictly (OpenCLIP's
/// `load_checkpoint` picks `state_dict` out of it), giving our features;
/// our reader gets epoch, name, weights and optimizer state back.
#[test]
fn open_clip_loads_our_training_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let (vs, model) = build("tiny-vit", Some("tiny-vit.json"));
    let mut named: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    let optimizer = Value::Dict(vec![
        (
            str("state"),
            Value::Dict(vec![(
                Value::Int(0),
                Value::Dict(vec![
                    (str("step"), Value::Tensor(Tensor::from(3.0f32))),
                    (str("exp_avg"), Value::Tensor(varied(Kind::Float, &[4]))),
                ]),
            )]),
        ),
        (
            str("param_groups"),
            Value::List(vec![Value::Dict(vec![
                (str("lr"), Value::Float(5e-4)),
                (
                    str("betas"),
                    Value::Tuple(vec![Value::Float(0.9), Value::Float(0.98)]),
                ),
                (str("params"), Value::List(vec![Value::Int(0)])),
            ])]),
        ),
    ]);
    let checkpoint = checkpoint_dict(1, "run", &named, optimizer, None);
    let path = dir.path().join("epoch_1.pt");
    write_torch_checkpoint(&path, &checkpoint).unwrap();

    let config = config_path("tiny-vit.json");
    let out = dir.path().to_str().unwrap();
    common::run_oracle(
        include_str!("oracle/weights_roundtrip.py"),
        &[
            "load",
            "tiny-vit",
            path.to_str().unwrap(),
            out,
            "--config",
            &config,
        ],
    );
    assert_same_features(
        &model,
        &dir.path().join("features.safetensors"),
        "epoch_1.pt",
    );

    let read = read_checkpoint(&path).unwrap();
    assert_eq!((read.epoch, read.name.as_deref()), (Some(1), Some("run")));
    assert_eq!(read.state_dict.len(), named.len());
    for ((name, tensor), (read_name, read_tensor)) in named.iter().zip(&read.state_dict) {
        assert_eq!(name, read_name);
        assert!(bytes_of(tensor) == bytes_of(read_tensor), "{name}");
    }
    assert_identical(
        checkpoint.get("optimizer").unwrap(),
        &read.optimizer.unwrap(),
        "optimizer",
    );
}

/// A write that fails leaves the checkpoint already there untouched and no
/// temporary file behind: one refused before anything is written (a dtype
/// torch.save archives cannot hold here), one failing after the whole
/// temporary file is written (the rename onto a folder).
#[test]
fn failed_writes_leave_the_old_checkpoint_and_no_debris() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("epoch_latest.pt");
    let good = Value::Dict(vec![(str("epoch"), Value::Int(1))]);
    write_torch_checkpoint(&path, &good).unwrap();
    let before = std::fs::read(&path).unwrap();

    let bad = Value::Dict(vec![(
        str("state_dict"),
        Value::state_dict(&[(
            "visual.proj".into(),
            Tensor::zeros([2], (Kind::ComplexFloat, Device::Cpu)),
        )]),
    )]);
    let err = format!("{:#}", write_torch_checkpoint(&path, &bad).unwrap_err());
    assert!(
        err.contains("epoch_latest.pt")
            && err.contains("`state_dict`")
            && err.contains("`visual.proj`")
            && err.contains("ComplexFloat"),
        "{err}"
    );
    assert_eq!(std::fs::read(&path).unwrap(), before);
    assert_eq!(common::file_names(dir.path()), ["epoch_latest.pt"]);

    let occupied = dir.path().join("epoch_2.pt");
    std::fs::create_dir(&occupied).unwrap();
    std::fs::write(occupied.join("keep"), b"x").unwrap();
    let err = format!(
        "{:#}",
        write_torch_checkpoint(&occupied, &good).unwrap_err()
    );
    assert!(
        err.contains("epoch_2.pt") && err.contains("renaming"),
        "{err}"
    );
    assert_eq!(
        common::file_names(dir.path()),
        ["epoch_2.pt", "epoch_latest.pt"]
    );
    assert_eq!(common::file_names(&occupied), ["keep"]);
    assert_eq!(std::fs::read(&path).unwrap(), before);
}
