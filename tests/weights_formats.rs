//! Weight-file formats against PyTorch itself: files `torch.save` and
//! `safetensors` write in the oracle environment are read by
//! `clipflow_core::weights` and compared byte for byte; files clipflow writes
//! are read back by `safetensors.torch.load_file` and OpenCLIP's loader.
//! Every comparison is exact: reading weights involves no arithmetic, so any
//! difference at all is a bug.

mod common;

use std::collections::HashMap;
use std::path::Path;

use clipflow_core::weights::{
    read_checkpoint, read_weights, write_safetensors, NamedTensors, Value,
};
use tch::{Kind, Tensor};

/// Python prelude: `describe(state_dict)` lists each tensor as
/// `[name, dtype, shape, hex of its contiguous bytes]`.
const DESCRIBE: &str = r#"
import sys, os, json, collections, torch
def describe(sd):
    return [[k, str(v.dtype).removeprefix("torch."), list(v.shape),
             v.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes().hex()]
            for k, v in sd.items()]
out = sys.argv[1]
torch.manual_seed(0)
"#;

/// One tensor as Python described it.
#[derive(Debug, PartialEq)]
struct Described {
    name: String,
    dtype: String,
    shape: Vec<i64>,
    hex: String,
}

fn parse_described(json: &serde_json::Value) -> Vec<Described> {
    json.as_array()
        .expect("a list of tensors")
        .iter()
        .map(|entry| Described {
            name: entry[0].as_str().unwrap().to_owned(),
            dtype: entry[1].as_str().unwrap().to_owned(),
            shape: entry[2]
                .as_array()
                .unwrap()
                .iter()
                .map(|n| n.as_i64().unwrap())
                .collect(),
            hex: entry[3].as_str().unwrap().to_owned(),
        })
        .collect()
}

fn torch_dtype_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Float => "float32",
        Kind::Half => "float16",
        Kind::BFloat16 => "bfloat16",
        Kind::Double => "float64",
        Kind::Int64 => "int64",
        Kind::Int => "int32",
        Kind::Int16 => "int16",
        Kind::Int8 => "int8",
        Kind::Uint8 => "uint8",
        Kind::Bool => "bool",
        other => panic!("unexpected kind {other:?}"),
    }
}

fn tensor_hex(tensor: &Tensor) -> String {
    let contiguous = tensor.contiguous();
    let numel = contiguous.numel();
    let mut bytes = vec![0u8; numel * contiguous.kind().elt_size_in_bytes()];
    contiguous.copy_data_u8(&mut bytes, numel);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn describe(tensors: &NamedTensors) -> Vec<Described> {
    tensors
        .iter()
        .map(|(name, tensor)| Described {
            name: name.clone(),
            dtype: torch_dtype_name(tensor.kind()).to_owned(),
            shape: tensor.size(),
            hex: tensor_hex(tensor),
        })
        .collect()
}

/// Runs `script` (after the prelude) with a fresh directory; it prints a JSON
/// object mapping each file it wrote to `describe(...)` of what it saved.
/// Returns the directory and that object.
fn write_with_python(script: &str) -> (tempfile::TempDir, serde_json::Value) {
    let dir = tempfile::tempdir().unwrap();
    let stdout = common::run_oracle(
        &format!("{DESCRIBE}\n{script}"),
        &[dir.path().to_str().unwrap()],
    );
    let manifest = serde_json::from_str(&stdout).expect("the script prints JSON");
    (dir, manifest)
}

/// Reads every file of the manifest and checks names, order, dtypes, shapes
/// and bytes against what Python saved.
fn check_files_match(dir: &Path, manifest: &serde_json::Value) {
    for (file, expected) in manifest.as_object().unwrap() {
        let read = read_weights(&dir.join(file)).unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(describe(&read), parse_described(expected), "{file}");
    }
}

#[test]
fn reads_plain_state_dicts_in_every_pickle_protocol_and_extension() {
    // A module's state_dict() is an OrderedDict carrying `_metadata`;
    // BatchNorm adds an int64 scalar buffer.
    let (dir, manifest) = write_with_python(
        r#"
m = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3), torch.nn.LayerNorm(3))
sd = m.state_dict()
torch.save(sd, f"{out}/plain.pt")
torch.save(sd, f"{out}/pytorch_model.bin", pickle_protocol=4)
torch.save(sd, f"{out}/weights.anything", pickle_protocol=5)
plain = collections.OrderedDict([("b", torch.randn(2)), ("a", torch.randn(3, 2))])
torch.save(plain, f"{out}/ordered.pt")
params = {k: torch.nn.Parameter(v) for k, v in plain.items()}
torch.save(params, f"{out}/parameters.pt")
print(json.dumps({f: describe(sd) for f in ["plain.pt", "pytorch_model.bin", "weights.anything"]}
                 | {"ordered.pt": describe(plain), "parameters.pt": describe(plain)}))
"#,
    );
    check_files_match(dir.path(), &manifest);
}

#[test]
fn reads_every_dtype_views_and_shared_storage() {
    let (dir, manifest) = write_with_python(
        r#"
dtypes = {str(d).removeprefix("torch."): torch.randn(2, 3).to(d)
          for d in [torch.float32, torch.float16, torch.bfloat16, torch.float64]}
dtypes |= {"int64": torch.arange(-3, 3), "int32": torch.arange(6, dtype=torch.int32),
           "int16": torch.arange(4, dtype=torch.int16), "int8": torch.arange(-2, 2, dtype=torch.int8),
           "uint8": torch.arange(250, 256, dtype=torch.uint8), "bool": torch.tensor([True, False, True]),
           "scalar": torch.tensor(2.5), "empty": torch.zeros(0, 4)}
torch.save(dtypes, f"{out}/dtypes.pt")
base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
views = {"base": base, "transposed": base.t(), "row": base[2], "strided": base[1:3, ::2],
         "expanded": base[0, :1].expand(3, 2), "half_base": torch.randn(8).half()}
views["half_view"] = views["half_base"][3:7]
torch.save(views, f"{out}/views.pt")
import zipfile
storages = [n for n in zipfile.ZipFile(f"{out}/views.pt").namelist() if "/data/" in n]
assert len(storages) == 2, storages  # the views really share one storage
print(json.dumps({"dtypes.pt": describe(dtypes), "views.pt": describe(views)}))
"#,
    );
    check_files_match(dir.path(), &manifest);

    // Views come back as views of one storage, as torch.load gives them.
    let views: HashMap<_, _> = read_weights(&dir.path().join("views.pt"))
        .unwrap()
        .into_iter()
        .collect();
    let base = &views["base"];
    assert_eq!(views["transposed"].data_ptr(), base.data_ptr());
    assert_eq!(views["row"].stride(), vec![1]);
    assert_eq!(views["strided"].stride(), vec![6, 2]);
}

#[test]
fn reads_openclip_training_checkpoints() {
    // The dict open_clip_train.main saves: DDP-prefixed weights, AdamW state
    // (int-keyed, with scalar `step` tensors), the AMP scaler.
    let (dir, manifest) = write_with_python(
        r#"
m = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3))
opt = torch.optim.AdamW(m.parameters(), lr=5e-4, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.2)
m(torch.randn(5, 4)).sum().backward()
opt.step()
sd = m.state_dict()
scaler = {"scale": 32768.0, "growth_factor": 2.0, "backoff_factor": 0.5,
          "growth_interval": 2000, "_growth_tracker": 7}
torch.save({"epoch": 3, "name": "2024_01_01-run", "state_dict": {"module." + k: v for k, v in sd.items()},
            "optimizer": opt.state_dict(), "scaler": scaler}, f"{out}/epoch_3.pt")
print(json.dumps({"epoch_3.pt": describe(sd),
                  "exp_avg": describe({"0": opt.state_dict()["state"][0]["exp_avg"]})}))
"#,
    );
    let path = dir.path().join("epoch_3.pt");
    let weights = read_weights(&path).unwrap();
    assert_eq!(describe(&weights), parse_described(&manifest["epoch_3.pt"]));

    let checkpoint = read_checkpoint(&path).unwrap();
    assert_eq!(checkpoint.epoch, Some(3));
    assert_eq!(checkpoint.name.as_deref(), Some("2024_01_01-run"));
    assert_eq!(describe(&checkpoint.state_dict), describe(&weights));

    let optimizer = checkpoint.optimizer.expect("optimizer state");
    let Some(Value::List(groups)) = optimizer.get("param_groups") else {
        panic!("param_groups is a list: {optimizer:?}");
    };
    assert!(matches!(groups[0].get("lr"), Some(Value::Float(lr)) if *lr == 5e-4));
    assert!(matches!(groups[0].get("betas"),
        Some(Value::Tuple(b)) if matches!(b[..], [Value::Float(b1), Value::Float(b2)] if b1 == 0.9 && b2 == 0.98)));
    let Some(Value::Dict(state)) = optimizer.get("state") else {
        panic!("optimizer state is a dict");
    };
    let (Value::Int(0), first) = &state[0] else {
        panic!("optimizer state is keyed by parameter index");
    };
    let Some(Value::Tensor(exp_avg)) = first.get("exp_avg") else {
        panic!("exp_avg is a tensor");
    };
    let expected = &parse_described(&manifest["exp_avg"])[0];
    assert_eq!(tensor_hex(exp_avg), expected.hex);
    assert!(
        matches!(first.get("step"), Some(Value::Tensor(step)) if step.double_value(&[]) == 1.0)
    );

    let scaler = checkpoint.scaler.expect("scaler state");
    assert!(matches!(scaler.get("scale"), Some(Value::Float(s)) if *s == 32768.0));
    assert!(matches!(scaler.get("_growth_tracker"), Some(Value::Int(7))));
}

#[test]
fn reads_safetensors_files() {
    let (dir, manifest) = write_with_python(
        r#"
from safetensors.torch import save_file
sd = {"visual.proj": torch.randn(4, 2), "logit_scale": torch.tensor(4.6052),
      "half": torch.randn(3).half(), "bf": torch.randn(5).bfloat16(),
      "ids": torch.arange(7), "mask": torch.tensor([True, False])}
save_file(sd, f"{out}/model.safetensors", metadata={"format": "pt"})
# safetensors stores tensors by dtype size and name; that is the file order.
order = sorted(sd, key=lambda k: (-sd[k].element_size(), k))
print(json.dumps({"model.safetensors": describe({k: sd[k] for k in order})}))
"#,
    );
    check_files_match(dir.path(), &manifest);
}

#[test]
fn refuses_pickles_that_would_run_code() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("marker");
    common::run_oracle(
        r#"
import sys, os, torch
out, marker = sys.argv[1], sys.argv[2]
class RunsShell:
    def __reduce__(self):
        return (os.system, (f"touch {marker}",))
class RunsEval:
    def __reduce__(self):
        return (eval, (f"open({marker!r}, 'w').write('pwned')",))
torch.save({"weight": torch.ones(2), "bias": RunsShell()}, f"{out}/system.pt")
torch.save({"state_dict": {"w": torch.ones(1)}, "epoch": RunsEval()}, f"{out}/eval.pt")
"#,
        &[dir.path().to_str().unwrap(), marker.to_str().unwrap()],
    );
    for (file, global) in [
        ("system.pt", "`posix.system`"),
        ("eval.pt", "`__builtin__.eval`"),
    ] {
        let path = dir.path().join(file);
        let error = format!("{:#}", read_weights(&path).unwrap_err());
        assert!(error.contains(file), "{error}");
        assert!(
            error.contains(&format!("refusing to load pickled global {global}")),
            "{error}"
        );
        assert!(read_checkpoint(&path).is_err());
    }
    assert!(!marker.exists(), "a pickled call ran");
}

#[test]
fn corrupt_and_truncated_files_give_errors_naming_the_file() {
    let (dir, _) = write_with_python(
        r#"
import zipfile
from safetensors.torch import save_file
sd = {"a": torch.randn(64, 64), "b": torch.randn(8)}
torch.save(sd, f"{out}/good.pt")
save_file(sd, f"{out}/good.safetensors")
for name in ["good.pt", "good.safetensors"]:
    data = open(f"{out}/{name}", "rb").read()
    open(f"{out}/truncated-{name}", "wb").write(data[: len(data) // 2])
# A well-formed archive whose storage lost half its bytes.
with zipfile.ZipFile(f"{out}/good.pt") as src, zipfile.ZipFile(f"{out}/short-storage.pt", "w") as dst:
    for item in src.infolist():
        data = src.read(item)
        dst.writestr(item, data[: len(data) // 2] if item.filename.endswith("/data/0") else data)
# An archive whose pickle stops half way.
with zipfile.ZipFile(f"{out}/good.pt") as src, zipfile.ZipFile(f"{out}/short-pickle.pt", "w") as dst:
    for item in src.infolist():
        data = src.read(item)
        dst.writestr(item, data[: len(data) // 2] if item.filename.endswith("data.pkl") else data)
open(f"{out}/text.pt", "w").write("not weights at all")
torch.save([torch.ones(1)], f"{out}/list.pt")
torch.save({"a": torch.ones(1), "b": 3}, f"{out}/mixed.pt")
print("{}")
"#,
    );
    let cases = [
        ("truncated-good.pt", "zip"),
        ("truncated-good.safetensors", "truncated"),
        ("short-storage.pt", "truncated"),
        ("short-pickle.pt", "truncated"),
        ("text.pt", "not a weights file"),
        ("list.pt", "holds a `list`, not a state_dict"),
        ("mixed.pt", "entry `b` holds a `int`, not a tensor"),
        ("missing.pt", "opening"),
    ];
    for (file, reason) in cases {
        let error = format!("{:#}", read_weights(&dir.path().join(file)).unwrap_err());
        assert!(error.contains(file), "{error}");
        assert!(error.contains(reason), "{file}: {error}");
    }
    assert_eq!(read_weights(&dir.path().join("good.pt")).unwrap().len(), 2);
}

#[test]
fn written_safetensors_load_in_safetensors_and_openclip() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    let base = Tensor::arange(12, (Kind::Float, tch::Device::Cpu)).reshape([3, 4]);
    let tensors: NamedTensors = vec![
        ("visual.proj".into(), base.tr()), // not contiguous
        ("logit_scale".into(), Tensor::from(4.6052f32)),
        (
            "half".into(),
            Tensor::from_slice(&[1.5f32, -2.25, 65504.0]).to_kind(Kind::Half),
        ),
        (
            "bf".into(),
            Tensor::from_slice(&[0.1f32, 3e38]).to_kind(Kind::BFloat16),
        ),
        (
            "positions".into(),
            Tensor::arange(5, (Kind::Int64, tch::Device::Cpu)),
        ),
        ("mask".into(), Tensor::from_slice(&[true, false, true])),
        ("row".into(), base.get(1)),
    ];
    // Written twice: the second write replaces the first in place.
    write_safetensors(&path, &tensors[..2]).unwrap();
    write_safetensors(&path, &tensors).unwrap();
    let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(leftovers.len(), 1, "temporary files remain: {leftovers:?}");

    let stdout = common::run_oracle(
        &format!(
            "{DESCRIBE}\n{}",
            r#"
from safetensors.torch import load_file
from open_clip.factory import load_state_dict
path = sys.argv[2]
loaded = load_file(path)
assert describe(load_state_dict(path)) == describe(loaded)
print(json.dumps(describe(loaded)))
"#
        ),
        &["unused", path.to_str().unwrap()],
    );
    let mut from_python = parse_described(&serde_json::from_str(&stdout).unwrap());
    let mut expected = describe(&tensors);
    from_python.sort_by(|a, b| a.name.cmp(&b.name));
    expected.sort_by(|a, b| a.name.cmp(&b.name));
    assert_eq!(from_python, expected);

    // And clipflow reads back what it wrote.
    let mut read_back = describe(&read_weights(&path).unwrap());
    read_back.sort_by(|a, b| a.name.cmp(&b.name));
    assert_eq!(read_back, expected);

    let error =
        write_safetensors(&dir.path().join("no-such-dir/model.safetensors"), &tensors).unwrap_err();
    assert!(format!("{error:#}").contains("no-such-dir"), "{error:#}");
    let duplicated =
        [tensors[1].0.clone(), tensors[1].0.clone()].map(|name| (name, Tensor::from(1.0f32)));
    let error = write_safetensors(&path, &duplicated).unwrap_err();
    assert!(format!("{error:#}").contains("appears twice"), "{error:#}");
    assert_eq!(
        read_weights(&path).unwrap().len(),
        tensors.len(),
        "a failed write kept the old file"
    );
}
