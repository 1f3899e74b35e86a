//! The run's arguments as OpenCLIP's `vars(args)` holds them when `main`
//! writes params.txt (and hands them to wandb as config): the parsed flags
//! plus what `main` adds before that point (distributed setup, run name, log
//! and checkpoint paths, the report switches).

use clipflow_actors::report::PyValue;
use serde_json::Value;

use crate::train_args::TrainArgs;

/// What `main` computed that the flags alone do not say.
pub struct DerivedParams<'a> {
    pub name: &'a str,
    /// The device as OpenCLIP names it (`cpu`, `cuda:0`).
    pub device: String,
    pub log_path: Option<String>,
    pub checkpoint_path: String,
    pub tensorboard_path: String,
    pub wandb: bool,
    pub tensorboard: bool,
    /// `--resume` after `latest` was resolved to a file (or `None`).
    pub resume: Option<String>,
    /// The launch: `(distributed, world_size, rank, local_rank)`.
    pub ranks: (bool, usize, usize, usize),
}

/// `(name, value)` for every attribute of OpenCLIP's `args`, unsorted.
pub fn run_params(args: &TrainArgs, derived: &DerivedParams) -> Vec<(String, PyValue)> {
    let Value::Object(namespace) = args.to_open_clip_namespace() else {
        unreachable!("the namespace is a JSON object");
    };
    let mut params: Vec<(String, PyValue)> = namespace
        .into_iter()
        .map(|(name, value)| (name, py_value(&value)))
        .collect();
    let optional = |value: &Option<String>| match value {
        Some(text) => PyValue::Str(text.clone()),
        None => PyValue::None,
    };
    let mut set = |name: &str, value: PyValue| match params.iter_mut().find(|(n, _)| n == name) {
        Some(entry) => entry.1 = value,
        None => params.push((name.to_string(), value)),
    };
    set("name", PyValue::Str(derived.name.to_string()));
    set("device", PyValue::Str(derived.device.clone()));
    let (distributed, world_size, rank, local_rank) = derived.ranks;
    set("distributed", PyValue::Bool(distributed));
    set("world_size", PyValue::Int(world_size as i64));
    set("rank", PyValue::Int(rank as i64));
    set("local_rank", PyValue::Int(local_rank as i64));
    set("log_path", optional(&derived.log_path));
    set("log_level", PyValue::Int(if args.debug { 10 } else { 20 }));
    set("wandb", PyValue::Bool(derived.wandb));
    set("tensorboard", PyValue::Bool(derived.tensorboard));
    set(
        "checkpoint_path",
        PyValue::Str(derived.checkpoint_path.clone()),
    );
    set(
        "tensorboard_path",
        PyValue::Str(derived.tensorboard_path.clone()),
    );
    set("resume", optional(&derived.resume));
    set(
        "distill",
        PyValue::Bool(args.distill_model.is_some() && args.distill_pretrained.is_some()),
    );
    if let Some([size]) = args.force_image_size.as_deref() {
        // main turns a one-element --force-image-size list into an int.
        set("force_image_size", PyValue::Int(*size as i64));
    }
    params
}

/// A JSON value of the namespace as the Python value it stands for.
fn py_value(value: &Value) -> PyValue {
    match value {
        Value::Null => PyValue::None,
        Value::Bool(flag) => PyValue::Bool(*flag),
        Value::Number(number) => match number.as_i64() {
            Some(int) => PyValue::Int(int),
            None => PyValue::Float(number.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(text) => PyValue::Str(text.clone()),
        Value::Array(items) => PyValue::List(items.iter().map(py_value).collect()),
        Value::Object(entries) => PyValue::Dict(
            entries
                .iter()
                .map(|(key, value)| (key.clone(), py_value(value)))
                .collect(),
        ),
    }
}
