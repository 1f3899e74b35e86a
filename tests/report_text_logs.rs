//! The text OpenCLIP's training writes, compared with OpenCLIP run at test
//! time: the `Train Epoch` / `Eval Epoch` lines and `train/` / `val/`
//! scalars of `train_one_epoch` and `evaluate` given the same numbers
//! (tests/oracle/report_lines.py), params.txt as `open_clip_train.main`
//! writes it, out.log records as its `setup_logging` formats them, and the
//! Python number and value formatting underneath.

mod common;

use std::path::Path;

use clipflow_actors::report::{
    eval_scalars, format_eval_line, format_eval_progress_line, format_train_step_line,
    py_format::{fixed, float_repr, general},
    write_params_txt, LossReading, Meter, PyValue, RunLog, TrainStepReport,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

const LINES_ORACLE: &str = include_str!("oracle/report_lines.py");

fn u(value: &Value) -> u64 {
    value.as_u64().expect("an integer")
}

fn f(value: &Value) -> f64 {
    value.as_f64().expect("a number")
}

fn meter(value: &Value) -> Meter {
    Meter {
        last: f(&value["last"]),
        sum: f(&value["sum"]),
        count: u(&value["count"]),
    }
}

fn train_report(inputs: &Value) -> TrainStepReport {
    TrainStepReport {
        epoch: u(&inputs["epoch"]),
        step: u(&inputs["step"]),
        batch_count: u(&inputs["batch_count"]),
        num_batches_per_epoch: u(&inputs["num_batches_per_epoch"]),
        samples_per_epoch: u(&inputs["samples_per_epoch"]),
        last_batch_size: u(&inputs["last_batch_size"]),
        batch_size: u(&inputs["batch_size"]),
        accum_freq: u(&inputs["accum_freq"]),
        world_size: u(&inputs["world_size"]),
        data_time: meter(&inputs["data_time"]),
        batch_time: meter(&inputs["batch_time"]),
        lr: f(&inputs["lr"]),
        logit_scale: f(&inputs["logit_scale"]),
        losses: inputs["losses"]
            .as_array()
            .unwrap()
            .iter()
            .map(|loss| LossReading {
                name: loss[0].as_str().unwrap().to_string(),
                last: f(&loss[1]),
                average: f(&loss[2]),
            })
            .collect(),
    }
}

fn named_values(pairs: &Value) -> Vec<(String, f64)> {
    pairs
        .as_array()
        .unwrap()
        .iter()
        .map(|pair| (pair[0].as_str().unwrap().to_string(), f(&pair[1])))
        .collect()
}

/// OpenCLIP's training and evaluation lines and scalars, from the numbers
/// its own loop had when it logged them: identical text, identical scalars
/// (same names, order, values; steps as OpenCLIP gives them).
#[test]
fn train_and_eval_lines_match_openclip_given_the_same_numbers() {
    let scratch = tempfile::tempdir().unwrap();
    let out = common::run_oracle(LINES_ORACLE, &[scratch.path().to_str().unwrap()]);
    let records: Value = serde_json::from_str(&out).unwrap();

    let mut our_scalars: Vec<(String, f64, u64)> = Vec::new();
    let train = records["train"].as_array().unwrap();
    assert!(
        train.len() >= 8,
        "the oracle logged {} training lines",
        train.len()
    );
    let mut evals = records["eval"].as_array().unwrap().iter();
    for record in train {
        let report = train_report(&record["inputs"]);
        assert_eq!(
            format_train_step_line(&report),
            record["line"].as_str().unwrap()
        );
        let last_of_epoch = report.batch_count == report.num_batches_per_epoch;
        our_scalars.extend(
            report
                .scalars()
                .into_iter()
                .map(|(tag, value)| (tag, value, report.step)),
        );
        // evaluate runs after each epoch and writes its scalars at the epoch.
        if last_of_epoch {
            let eval = evals.next().expect("an evaluation after each epoch");
            let epoch = u(&eval["epoch"]);
            let metrics = named_values(&eval["metrics"]);
            assert_eq!(
                format_eval_line(epoch, &metrics),
                eval["line"].as_str().unwrap()
            );
            our_scalars.extend(
                eval_scalars(&metrics)
                    .into_iter()
                    .map(|(tag, value)| (tag, value, epoch)),
            );
        }
    }
    assert!(evals.next().is_none());

    let theirs: Vec<(String, f64, u64)> = records["tensorboard"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s[0].as_str().unwrap().to_string(), f(&s[1]), u(&s[2])))
        .collect();
    assert_eq!(our_scalars, theirs);

    for record in records["eval_progress"].as_array().unwrap() {
        let line = format_eval_progress_line(
            u(&record["epoch"]),
            u(&record["num_samples"]),
            u(&record["samples_per_val"]),
            f(&record["clip_loss"]),
        );
        assert_eq!(line, record["line"].as_str().unwrap());
    }
}

const FORMAT_ORACLE: &str = r#"
import json, sys
specs = json.loads(sys.argv[1])
values = [float(v) for v in json.loads(sys.argv[2])]
print(json.dumps({"formatted": [[format(v, s) for s in specs] for v in values],
                  "repr": [repr(v) for v in values]}))
"#;

/// Every float format spec the log lines use, and `repr`, on edge cases
/// (ties, powers of ten, the fixed/scientific switch, non-finite values) and
/// on random values over many magnitudes: the same text as Python's.
#[test]
fn number_formats_match_python() {
    let mut values: Vec<f64> = vec![
        0.0,
        -0.0,
        0.5,
        1.5,
        2.5,
        12.5,
        0.125,
        0.0005,
        1e-5,
        1e-4,
        9.99995,
        99999.5,
        999999.5,
        123456.0,
        1e15,
        1e16,
        1.5e16,
        100.0,
        14.2857,
        4.6052,
        1e-8,
        5e-324,
        1.7976931348623157e308,
        f64::NAN,
        f64::INFINITY,
        f64::NEG_INFINITY,
    ];
    let mut rng = StdRng::seed_from_u64(7);
    for _ in 0..400 {
        let magnitude: i32 = rng.random_range(-9..18);
        let sign = if rng.random_bool(0.2) { -1.0 } else { 1.0 };
        values.push(sign * rng.random::<f64>() * 10f64.powi(magnitude));
    }
    let specs = [".0f", ".3f", ".4f", ".6f", "5f", "#g", "#.5g", ".5g"];
    let ours = |value: f64| -> Vec<String> {
        vec![
            fixed(value, 0, 0),
            fixed(value, 3, 0),
            fixed(value, 4, 0),
            fixed(value, 6, 0),
            fixed(value, 6, 5),
            general(value, 6, true),
            general(value, 5, true),
            general(value, 5, false),
        ]
    };
    let encoded: Vec<String> = values.iter().map(|v| format!("{v:e}")).collect();
    let out = common::run_oracle(
        FORMAT_ORACLE,
        &[&json!(specs).to_string(), &json!(encoded).to_string()],
    );
    let expected: Value = serde_json::from_str(&out).unwrap();
    for (index, value) in values.iter().enumerate() {
        let theirs: Vec<String> =
            serde_json::from_value(expected["formatted"][index].clone()).unwrap();
        assert_eq!(ours(*value), theirs, "formats of {value:e} ({specs:?})");
        assert_eq!(
            float_repr(*value),
            expected["repr"][index],
            "repr of {value:e}"
        );
    }
}

/// A typed description of a Python value, which the oracle rebuilds.
fn typed(value: &PyValue) -> Value {
    match value {
        PyValue::None => json!({"none": null}),
        PyValue::Bool(flag) => json!({"bool": flag}),
        PyValue::Int(number) => json!({"int": number}),
        PyValue::Float(number) => json!({"float": format!("{number:e}")}),
        PyValue::Str(text) => json!({"str": text}),
        PyValue::List(items) => json!({"list": items.iter().map(typed).collect::<Vec<_>>()}),
        PyValue::Tuple(items) => json!({"tuple": items.iter().map(typed).collect::<Vec<_>>()}),
        PyValue::Dict(entries) => json!({"dict": entries
            .iter()
            .map(|(key, value)| json!([key, typed(value)]))
            .collect::<Vec<_>>()}),
    }
}

/// The inverse of `typed`, for what the oracle sends back.
fn untyped(value: &Value) -> PyValue {
    let (kind, inner) = value.as_object().unwrap().iter().next().unwrap();
    let items = || inner.as_array().unwrap().iter().map(untyped).collect();
    match kind.as_str() {
        "none" => PyValue::None,
        "bool" => PyValue::Bool(inner.as_bool().unwrap()),
        "int" => PyValue::Int(inner.as_i64().unwrap()),
        "float" => PyValue::Float(inner.as_str().unwrap().parse().unwrap()),
        "str" => PyValue::Str(inner.as_str().unwrap().to_string()),
        "list" => PyValue::List(items()),
        "tuple" => PyValue::Tuple(items()),
        "dict" => PyValue::Dict(
            inner
                .as_array()
                .unwrap()
                .iter()
                .map(|pair| (pair[0].as_str().unwrap().to_string(), untyped(&pair[1])))
                .collect(),
        ),
        other => panic!("unknown type tag {other}"),
    }
}

/// Python's side of `typed`/`untyped`.
const PY_VALUES: &str = r#"
import json
def build(t):
    (kind, inner), = t.items()
    if kind == "none": return None
    if kind == "float": return float(inner)
    if kind == "list": return [build(i) for i in inner]
    if kind == "tuple": return tuple(build(i) for i in inner)
    if kind == "dict": return {k: build(v) for k, v in inner}
    return inner
def describe(v):
    if v is None: return {"none": None}
    if isinstance(v, bool): return {"bool": v}
    if isinstance(v, int): return {"int": v}
    if isinstance(v, float): return {"float": repr(v)}
    if isinstance(v, str): return {"str": v}
    if isinstance(v, list): return {"list": [describe(i) for i in v]}
    if isinstance(v, tuple): return {"tuple": [describe(i) for i in v]}
    if isinstance(v, dict): return {"dict": [[k, describe(i)] for k, i in v.items()]}
    raise TypeError(f"no typed form for {type(v)}")
"#;

/// `str()` of argument values (strings with quotes and escapes, nested
/// containers, one-element tuples, floats) as Python prints them.
#[test]
fn argument_values_print_as_python_str() {
    let values = vec![
        PyValue::None,
        PyValue::Bool(true),
        PyValue::Int(-3),
        PyValue::Float(1e-5),
        PyValue::Float(0.1),
        PyValue::Str("plain text\twith tab".into()),
        PyValue::List(vec![
            PyValue::Str("it's".into()),
            PyValue::Str("say \"hi\" it's".into()),
            PyValue::Str("back\\slash\nnew line \u{1} é".into()),
            PyValue::Float(2.0),
        ]),
        PyValue::Tuple(vec![PyValue::Float(0.5)]),
        PyValue::Tuple(vec![PyValue::Float(0.5), PyValue::Int(1)]),
        PyValue::Dict(vec![
            (
                "scale".into(),
                PyValue::Tuple(vec![PyValue::Float(0.9), PyValue::Float(1.0)]),
            ),
            ("use_timm".into(), PyValue::Bool(false)),
            (
                "nested".into(),
                PyValue::Dict(vec![("none".into(), PyValue::None)]),
            ),
        ]),
        PyValue::List(vec![]),
        PyValue::Dict(vec![]),
    ];
    let script = format!(
        "{PY_VALUES}\nimport sys\nprint(json.dumps([str(build(t)) for t in json.loads(sys.argv[1])]))"
    );
    let described: Vec<Value> = values.iter().map(typed).collect();
    let out = common::run_oracle(&script, &[&json!(described).to_string()]);
    let theirs: Vec<String> = serde_json::from_str(&out).unwrap();
    let ours: Vec<String> = values.iter().map(PyValue::to_string).collect();
    assert_eq!(ours, theirs);
}

/// Runs `open_clip_train.main` (no data: it builds the model, writes
/// params.txt and out.log, and stops) and sends back the arguments it
/// wrote, typed.
const MAIN_ORACLE: &str = r#"
import sys
import open_clip_train.main as main
captured = []
parse_args = main.parse_args
main.parse_args = lambda argv: captured.append(parse_args(argv)) or captured[0]
try:
    main.main(sys.argv[1:])
except AssertionError:  # "At least one train or eval dataset": params.txt is written by then
    pass
import os
args = captured[0]
params = open(os.path.join(args.logs, args.name, "params.txt")).read()
names = [line.split(": ", 1)[0] for line in params.splitlines()]
print(json.dumps({"params": [[n, describe(getattr(args, n))] for n in names]}))
"#;

/// params.txt byte for byte as OpenCLIP's main writes it, from the same
/// argument values; the lines it logs under `Params:` in out.log too.
#[test]
fn params_txt_matches_openclip_main() {
    let scratch = tempfile::tempdir().unwrap();
    let logs = scratch.path().join("logs");
    let script = format!("{PY_VALUES}{MAIN_ORACLE}");
    let out = common::run_oracle(
        &script,
        &[
            "--model",
            "RN50",
            "--logs",
            logs.to_str().unwrap(),
            "--name",
            "params-run",
            "--lr",
            "1e-5",
            "--aug-cfg",
            "scale=(0.5, 1.0)",
            "use_timm=True",
            "--image-mean",
            "0.5",
            "0.4",
            "0.3",
            "--wandb-notes",
            "it's a \"note\"",
            "--report-to",
            "tensorboard",
        ],
    );
    // main's own output (its logging) precedes the JSON on stdout.
    let expected: Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    let params: Vec<(String, String)> = expected["params"]
        .as_array()
        .unwrap()
        .iter()
        .map(|pair| {
            let name = pair[0].as_str().unwrap().to_string();
            (name, untyped(&pair[1]).to_string())
        })
        .rev() // the writer sorts them itself
        .collect();
    assert!(params.len() > 80, "OpenCLIP wrote {} params", params.len());
    let ours_path = scratch.path().join("params.txt");
    let lines = write_params_txt(&ours_path, &params).unwrap();
    let theirs_path = logs.join("params-run").join("params.txt");
    assert_eq!(
        std::fs::read_to_string(&ours_path).unwrap(),
        std::fs::read_to_string(&theirs_path).unwrap()
    );

    let out_log = std::fs::read_to_string(logs.join("params-run").join("out.log")).unwrap();
    let messages: Vec<&str> = out_log
        .lines()
        .filter_map(|line| line.split_once(" | INFO | ").map(|(_, message)| message))
        .collect();
    let start = messages.iter().position(|m| *m == "Params:").unwrap() + 1;
    let logged: Vec<String> = lines.iter().map(|line| format!("  {line}")).collect();
    assert_eq!(messages[start..start + logged.len()], logged[..]);
}

/// OpenCLIP's `setup_logging` with a log file, at INFO or (with --debug)
/// DEBUG, fed the records the Rust side writes too.
const LOGGING_ORACLE: &str = r#"
import json, logging, sys
from open_clip_train.logger import setup_logging
setup_logging(sys.argv[1], logging.DEBUG if sys.argv[2] == "debug" else logging.INFO)
for level, message in json.loads(sys.argv[3]):
    logging.log(getattr(logging, level), message)
"#;

fn check_log_file_format(debug: bool, dir: &Path) {
    let records = [
        ("DEBUG", "a debug record"),
        ("INFO", "Start epoch 0"),
        ("WARNING", "a warning | with a bar"),
        ("ERROR", "several\nlines in\none record"),
    ];
    let theirs_path = dir.join(format!("theirs-{debug}.log"));
    common::run_oracle(
        LOGGING_ORACLE,
        &[
            theirs_path.to_str().unwrap(),
            if debug { "debug" } else { "info" },
            &json!(records).to_string(),
        ],
    );
    let ours_path = RunLog::file_path(dir, "run", false, 0);
    std::fs::create_dir_all(ours_path.parent().unwrap()).unwrap();
    std::fs::remove_file(&ours_path).ok();
    let log = RunLog::open(Some(&ours_path), debug).unwrap();
    let levels = [
        clipflow_actors::report::Level::Debug,
        clipflow_actors::report::Level::Info,
        clipflow_actors::report::Level::Warning,
        clipflow_actors::report::Level::Error,
    ];
    for ((_, message), level) in records.iter().zip(levels) {
        log.log(level, message).unwrap();
    }
    drop(log);

    let ours = std::fs::read_to_string(&ours_path).unwrap();
    let theirs = std::fs::read_to_string(&theirs_path).unwrap();
    // The timestamps differ (the two ran at different moments) but have the
    // same shape, `2026-01-31,23:59:59`; everything after them is identical.
    let shape = |text: &str| -> String {
        text.chars()
            .map(|c| if c.is_ascii_digit() { '9' } else { c })
            .collect()
    };
    let timestamp_len = "2026-01-31,23:59:59".len();
    let strip = |text: &str| -> Vec<String> {
        text.split_inclusive('\n')
            .map(|line| match line.get(..timestamp_len) {
                Some(time) if shape(time) == "9999-99-99,99:99:99" => {
                    format!("<time>{}", &line[timestamp_len..])
                }
                _ => line.to_string(),
            })
            .collect()
    };
    assert_eq!(strip(&ours), strip(&theirs), "debug = {debug}");
    assert!(ours.contains(" | ERROR | several\nlines in\none record\n"));
    assert_eq!(ours.contains("a debug record"), debug);
}

#[test]
fn out_log_records_match_openclip_setup_logging() {
    let scratch = tempfile::tempdir().unwrap();
    check_log_file_format(false, scratch.path());
    check_log_file_format(true, scratch.path());
    assert_eq!(
        RunLog::file_path(Path::new("logs"), "run", true, 3),
        Path::new("logs/run/out-3")
    );
}
