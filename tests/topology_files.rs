//! Topology files: every validation error names the file, the line and the
//! component; flags fill in and override values; an output of numbers fans
//! out to two stages, an output of strings may not; a file that extends
//! another removes, adds and changes its stages, and its errors name the
//! file they are in; `clipflow check` and
//! `clipflow run` work on the shipped demo and report failures by stage.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use clipflow_actors::kinds::standard_registry;
use clipflow_actors::runtime::{Emitter, Source, Stage};
use clipflow_actors::topology::{FlagValues, Registry, Restarts, Topology, TopologyError};

/// A kind whose input type (`String`) matches none of the generic kinds.
struct PrintStrings;

impl Stage for PrintStrings {
    type In = String;
    type Out = ();
    fn process(&mut self, _item: String, _out: &mut Emitter<()>) -> anyhow::Result<()> {
        Ok(())
    }
}

/// Emits one string: an item type no fan-out was allowed for.
struct OneString;

impl Source for OneString {
    type Out = String;
    fn run(&mut self, out: &mut Emitter<String>) -> anyhow::Result<()> {
        out.emit("word".into())?;
        Ok(())
    }
}

/// The shipped kinds plus two registered the way an embedder would.
fn registry() -> Registry {
    let mut registry = standard_registry();
    registry.register_source("words", "emits a string", |_settings| {
        Ok(|_worker| Ok(OneString))
    });
    registry.register_stage(
        "print",
        "prints strings",
        Restarts::Forbidden,
        |_settings| Ok(|_worker| Ok(PrintStrings)),
    );
    registry
}

fn errors_of(text: &str, flags: &[(&str, &str)]) -> Vec<TopologyError> {
    let mut values = FlagValues::new();
    for (name, value) in flags {
        values.set(name, value);
    }
    match Topology::parse(Path::new("bad.toml"), text, &values, &registry()) {
        Ok(_) => panic!("expected errors in:\n{text}"),
        Err(errors) => errors.0,
    }
}

/// Asserts that exactly one error was found, on `line`, about `component`,
/// with `words` in its message.
fn assert_one_error(text: &str, line: usize, component: Option<&str>, words: &str) {
    let errors = errors_of(text, &[]);
    assert_eq!(errors.len(), 1, "{errors:#?}");
    let error = &errors[0];
    assert_eq!(error.file, PathBuf::from("bad.toml"));
    assert_eq!(error.line, Some(line), "{error}");
    assert_eq!(error.component.as_deref(), component, "{error}");
    assert!(error.message.contains(words), "'{words}' not in: {error}");
    let shown = error.to_string();
    assert!(shown.starts_with(&format!("bad.toml:{line}")), "{shown}");
}

const GOOD_HEAD: &str = r#"[stages.numbers]
kind = "counter"
count = 10
"#;

#[test]
fn unknown_kind() {
    let text = format!("{GOOD_HEAD}\n[stages.sink]\nkind = \"nul\"\ninputs = [\"numbers\"]\n");
    assert_one_error(&text, 5, Some("sink"), "unknown kind 'nul' (known kinds:");
}

#[test]
fn missing_input() {
    let text = format!("{GOOD_HEAD}\n[stages.sink]\nkind = \"null\"\ninputs = [\"numbrs\"]\n");
    let errors = errors_of(&text, &[]);
    // The misspelt link leaves `numbers` feeding nothing: both are named.
    assert_eq!(errors.len(), 2, "{errors:#?}");
    assert_eq!(errors[0].line, Some(1));
    assert_eq!(errors[0].component.as_deref(), Some("numbers"));
    assert!(errors[0].message.contains("goes nowhere"));
    assert_eq!(errors[1].line, Some(7));
    assert_eq!(errors[1].component.as_deref(), Some("sink"));
    assert!(errors[1]
        .message
        .contains("input 'numbrs' is not a component"));
}

#[test]
fn cycle() {
    let text = r#"[stages.a]
kind = "work"
inputs = ["b"]

[stages.b]
kind = "work"
inputs = ["a"]
"#;
    assert_one_error(text, 1, Some("a"), "is in a cycle: a -> b -> a");
}

#[test]
fn type_mismatch() {
    let text = format!("{GOOD_HEAD}\n[stages.show]\nkind = \"print\"\ninputs = [\"numbers\"]\n");
    assert_one_error(
        &text,
        7,
        Some("show"),
        "kind 'print' takes String but input 'numbers' (kind 'counter') emits u64",
    );
}

#[test]
fn a_fan_out_gives_each_stage_every_item() {
    let text = r#"
[stages.numbers]
kind = "counter"
count = 300

[stages.left]
kind = "work"
inputs = ["numbers"]

[stages.right]
kind = "null"
inputs = ["numbers"]

[stages.drain]
kind = "null"
inputs = ["left"]
"#;
    let topology = Topology::parse(
        Path::new("fan-out.toml"),
        text,
        &FlagValues::new(),
        &registry(),
    )
    .unwrap();
    let report = topology.into_graph().unwrap().run().unwrap();
    for stage in ["left", "right", "drain"] {
        assert_eq!(report.stage(stage).unwrap().items_in, 300, "{stage}");
    }
}

#[test]
fn an_output_that_cannot_be_copied_feeds_one_stage() {
    let text = r#"
[stages.words]
kind = "words"

[stages.first]
kind = "print"
inputs = ["words"]

[stages.second]
kind = "print"
inputs = ["words"]
"#;
    assert_one_error(
        text,
        11,
        Some("second"),
        "input 'words' already feeds 'first'; its items (String) go to one stage",
    );
}

#[test]
fn bad_values() {
    let sink = "\n[stages.sink]\nkind = \"null\"\ninputs = [\"numbers\"]\n";
    let zero = format!("{GOOD_HEAD}{sink}parallelism = 0\n");
    assert_one_error(
        &zero,
        8,
        Some("sink"),
        "parallelism must be an integer of at least 1, got 0",
    );
    let text = format!("{GOOD_HEAD}{sink}capacity = \"lots\"\n");
    assert_one_error(&text, 8, Some("sink"), "capacity must be an integer");
    let negative = "[stages.numbers]\nkind = \"counter\"\ncount = -3\n[stages.sink]\nkind = \"null\"\ninputs = [\"numbers\"]\n";
    assert_one_error(
        negative,
        3,
        Some("numbers"),
        "setting 'count': must not be negative",
    );
    let missing = "[stages.numbers]\nkind = \"counter\"\n[stages.sink]\nkind = \"null\"\ninputs = [\"numbers\"]\n";
    assert_one_error(missing, 1, Some("numbers"), "setting 'count': is required");
    let unknown = format!("{GOOD_HEAD}{sink}sleep_ms = 3\n");
    assert_one_error(
        &unknown,
        8,
        Some("sink"),
        "kind 'null' has no setting 'sleep_ms'",
    );
    let stateful = format!(
        "{GOOD_HEAD}\n[stages.show]\nkind = \"print\"\ninputs = [\"numbers\"]\nrestarts = 2\n"
    );
    let errors = errors_of(&stateful, &[]);
    assert!(
        errors
            .iter()
            .any(|e| e.line == Some(8)
                && e.message.contains("kind 'print' keeps state between items"))
    );
    let syntax = "[stages.numbers]\nkind = \"counter\"\ncount = = 3\n";
    let errors = errors_of(syntax, &[]);
    assert_eq!((errors.len(), errors[0].line), (1, Some(3)), "{errors:#?}");
}

const FLAGGED: &str = r#"[flags]
workers = 2
count = 100

[stages.numbers]
kind = "counter"
count = "${count}"

[stages.work]
kind = "work"
inputs = ["numbers"]
parallelism = "${workers}"

[stages.sink]
kind = "null"
inputs = ["work"]
"#;

#[test]
fn flags_fill_in_and_override_values() {
    let run = |flags: &FlagValues| {
        let topology = Topology::parse(Path::new("flags.toml"), FLAGGED, flags, &registry())
            .expect("valid topology");
        topology.into_graph().unwrap().run().unwrap()
    };
    let defaults = run(&FlagValues::new());
    assert_eq!(defaults.stage("work").unwrap().parallelism, 2);
    assert_eq!(defaults.stage("sink").unwrap().items_in, 100);

    let args: Vec<String> = ["--workers", "5", "--count=321"].map(String::from).to_vec();
    let overridden = run(&FlagValues::parse_args(&args).unwrap());
    assert_eq!(overridden.stage("work").unwrap().parallelism, 5);
    assert_eq!(overridden.stage("sink").unwrap().items_in, 321);
}

#[test]
fn flag_mistakes_are_named() {
    let errors = errors_of(FLAGGED, &[("wokers", "3")]);
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert!(errors[0]
        .message
        .contains("unknown flag --wokers; this topology takes: --count, --workers"));
    let errors = errors_of(FLAGGED, &[("workers", "many")]);
    assert_eq!(errors[0].line, Some(2), "{errors:#?}");
    assert!(errors[0]
        .message
        .contains("flag --workers: expected an integer, got 'many'"));
    let undeclared = FLAGGED.replace("\"${workers}\"", "\"${threads}\"");
    let errors = errors_of(&undeclared, &[]);
    assert_eq!(errors[0].line, Some(12), "{errors:#?}");
    assert_eq!(errors[0].component.as_deref(), Some("work"));
    assert!(errors[0]
        .message
        .contains("'${threads}', which the [flags] table does not declare"));
    assert!(FlagValues::parse_args(&["--workers".to_string()]).is_err());
}

/// Writes `base.toml` (FLAGGED) and `mine.toml` (`text`) into a new
/// folder; returns it and the checked topology of `mine.toml`, or its errors.
fn extending(text: &str) -> (tempfile::TempDir, Result<Topology, Vec<TopologyError>>) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("base.toml"), FLAGGED).unwrap();
    let mine = dir.path().join("mine.toml");
    std::fs::write(&mine, text).unwrap();
    let topology = Topology::load(&mine, &FlagValues::new(), &registry()).map_err(|e| e.0);
    (dir, topology)
}

#[test]
fn a_file_extends_another_removing_adding_and_changing_stages() {
    // The base's work stage out, a stage of this file in its place, the
    // sink re-linked to it, and a flag default changed.
    let (_dir, topology) = extending(
        r#"extends = "base.toml"
remove = ["work"]

[flags]
count = 7

[stages.double]
kind = "work"
inputs = ["numbers"]

[stages.sink]
inputs = ["double"]
"#,
    );
    let topology = topology.expect("valid topology");
    let components: Vec<(&str, &str)> = topology.components().collect();
    assert_eq!(
        components,
        [("numbers", "counter"), ("double", "work"), ("sink", "null")]
    );
    let report = topology.into_graph().unwrap().run().unwrap();
    assert_eq!(report.stage("sink").unwrap().items_in, 7);
    assert!(report.stage("work").is_none());
}

#[test]
fn errors_in_an_extending_file_name_the_file_and_line_they_are_in() {
    // A misspelt setting on line 4 of this file, in a stage of the base.
    let (dir, errors) = extending("extends = \"base.toml\"\n\n[stages.work]\nwork_uss = 5\n");
    let errors = errors.err().expect("errors");
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert_eq!(errors[0].file, dir.path().join("mine.toml"));
    assert_eq!(errors[0].line, Some(4));
    assert_eq!(errors[0].component.as_deref(), Some("work"));
    assert!(
        errors[0].message.contains("has no setting 'work_uss'"),
        "{errors:#?}"
    );

    // Taking out the stage the sink reads: the sink's inputs are named where
    // the base wrote them.
    let (dir, errors) = extending("extends = \"base.toml\"\nremove = [\"work\"]\n");
    let errors = errors.err().expect("errors");
    assert_eq!(errors.len(), 2, "{errors:#?}");
    let (numbers, sink) = (&errors[0], &errors[1]);
    assert_eq!(sink.file, dir.path().join("base.toml"));
    assert_eq!(
        (sink.line, sink.component.as_deref()),
        (Some(16), Some("sink"))
    );
    assert!(
        sink.message.contains("input 'work' is not a component"),
        "{sink}"
    );
    assert!(numbers.message.contains("goes nowhere"), "{numbers}");

    // A stage the base does not have.
    let (_dir, errors) = extending("extends = \"base.toml\"\nremove = [\"wrok\"]\n");
    let errors = errors.err().expect("errors");
    assert_eq!(errors[0].line, Some(2), "{errors:#?}");
    assert!(errors[0]
        .message
        .contains("'wrok' is not a stage of base.toml"));

    // A base that is nowhere, and remove without extends.
    let (_dir, errors) = extending("extends = \"nowhere.toml\"\n");
    let errors = errors.err().expect("errors");
    assert_eq!(errors[0].line, Some(1), "{errors:#?}");
    assert!(errors[0]
        .message
        .contains("extends 'nowhere.toml', which is in none of"));
    let errors = errors_of(&format!("remove = [\"numbers\"]\n{FLAGGED}"), &[]);
    assert_eq!(errors[0].line, Some(1), "{errors:#?}");
    assert!(errors[0].message.contains("this file extends none"));
}

#[test]
fn a_file_that_extends_itself_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let looping = dir.path().join("loop.toml");
    std::fs::write(&looping, "extends = \"loop.toml\"\n").unwrap();
    let errors = Topology::load(&looping, &FlagValues::new(), &registry())
        .err()
        .unwrap()
        .0;
    assert!(
        errors[0]
            .message
            .contains("a file that extends it does not count"),
        "{errors:#?}"
    );
}

fn demo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("topologies/demo.toml")
}

#[test]
fn the_demo_checks_and_runs_from_the_command_line() {
    let check = Command::new(common::clipflow_bin())
        .arg("check")
        .arg(demo())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&check.stdout);
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(
        stdout.contains("ok: numbers (counter) -> square (work) -> drain (null)"),
        "{stdout}"
    );

    let run = Command::new(common::clipflow_bin())
        .arg("run")
        .arg(demo())
        .args(["--count", "3000", "--workers", "2"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let drain = stdout
        .lines()
        .find(|line| line.starts_with("drain"))
        .unwrap_or_else(|| panic!("no summary row for 'drain':\n{stdout}"));
    assert!(
        drain.split_whitespace().any(|field| field == "3000"),
        "{drain}"
    );
    assert!(stdout.contains("<- bottleneck"), "{stdout}");
}

#[test]
fn the_command_line_names_the_failing_stage_and_the_bad_line() {
    let dir = tempfile::tempdir().unwrap();
    let failing = dir.path().join("failing.toml");
    let text = std::fs::read_to_string(demo()).unwrap().replace(
        "work_us = \"${work-us}\"",
        "work_us = \"${work-us}\"\nfail_on = [7]",
    );
    std::fs::write(&failing, text).unwrap();
    let run = Command::new(common::clipflow_bin())
        .arg("run")
        .arg(&failing)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success());
    assert!(stderr.contains("stage 'square' failed"), "{stderr}");
    assert!(stderr.contains("item 7 is in fail_on"), "{stderr}");

    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[stages.numbers]\nkind = \"countr\"\n").unwrap();
    let check = Command::new(common::clipflow_bin())
        .arg("check")
        .arg(&bad)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&check.stderr);
    assert!(!check.status.success());
    assert!(
        stderr.contains("bad.toml:1: stage 'numbers': unknown kind 'countr'"),
        "{stderr}"
    );
}
