//! Topology files: TOML that names a pipeline's components, their kinds,
//! parallelism, inputs (the links) and queue capacities, may refer to
//! command-line flags, and is checked against a [`Registry`] of kinds before
//! anything runs. See `topologies/README.md` for the format.
//!
//! ```toml
//! [flags]
//! workers = 2
//!
//! [stages.numbers]
//! kind = "counter"
//! count = 1000
//!
//! [stages.square]
//! kind = "work"
//! inputs = ["numbers"]
//! parallelism = "${workers}"
//! capacity = 64
//! ```

mod error;
mod flags;
mod registry;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use crate::runtime::{Graph, StageOptions};
pub use error::{TopologyError, TopologyErrors};
pub use flags::FlagValues;
use registry::{AllowFanOut, Plant};
pub use registry::{Kind, Registry, Restarts, SettingError, Settings};

/// A topology file as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TopologyToml {
    #[serde(default)]
    flags: BTreeMap<Spanned<String>, Spanned<toml::Value>>,
    stages: StageTables,
}

/// One checked component, ready to be added to a graph.
struct Component {
    name: String,
    kind: String,
    line: usize,
    inputs: Vec<String>,
    options: StageOptions,
    plant: Plant,
}

/// A checked topology: every kind known, every setting read, links typed and
/// acyclic. Components are in an order where producers come first.
pub struct Topology {
    file: PathBuf,
    components: Vec<Component>,
    /// The item types that may fan out, for the graph.
    fan_outs: Vec<AllowFanOut>,
}

impl Topology {
    /// Reads and checks the topology in `path`, with `flags` overriding the
    /// defaults of its `[flags]` table.
    pub fn load(
        path: &Path,
        flags: &FlagValues,
        registry: &Registry,
    ) -> Result<Topology, TopologyErrors> {
        let text = std::fs::read_to_string(path).map_err(|error| {
            TopologyErrors(vec![TopologyError {
                file: path.to_path_buf(),
                line: None,
                component: None,
                message: format!("cannot read the file: {error}"),
            }])
        })?;
        Self::parse(path, &text, flags, registry)
    }

    /// Checks the topology in `text`; `file` names it in errors.
    pub fn parse(
        file: &Path,
        text: &str,
        flags: &FlagValues,
        registry: &Registry,
    ) -> Result<Topology, TopologyErrors> {
        let mut checker = Checker {
            file: file.to_path_buf(),
            text,
            errors: Vec::new(),
        };
        let components = checker.check(flags, registry);
        let mut errors = checker.errors;
        if errors.is_empty() {
            Ok(Topology {
                file: file.to_path_buf(),
                components,
                fan_outs: registry.fan_out_allowances(),
            })
        } else {
            errors.sort_by_key(|e| e.line);
            Err(TopologyErrors(errors))
        }
    }

    /// (name, kind) of each component, producers first.
    pub fn components(&self) -> impl Iterator<Item = (&str, &str)> {
        self.components
            .iter()
            .map(|c| (c.name.as_str(), c.kind.as_str()))
    }

    /// Builds the runnable graph.
    pub fn into_graph(self) -> Result<Graph, TopologyErrors> {
        let mut graph = Graph::new();
        for allow in &self.fan_outs {
            allow(&mut graph);
        }
        for component in self.components {
            let inputs: Vec<&str> = component.inputs.iter().map(String::as_str).collect();
            (component.plant)(&mut graph, &component.name, &inputs, component.options).map_err(
                |error| {
                    TopologyErrors(vec![TopologyError {
                        file: self.file.clone(),
                        line: Some(component.line),
                        component: Some(component.name.clone()),
                        message: error.to_string(),
                    }])
                },
            )?;
        }
        Ok(graph)
    }
}

/// Collects every mistake of one file.
struct Checker<'a> {
    file: PathBuf,
    text: &'a str,
    errors: Vec<TopologyError>,
}

/// A component's table once flags are substituted, before linking.
struct Parsed {
    component: Component,
    inputs_line: usize,
}

impl Checker<'_> {
    fn line_of(&self, span: std::ops::Range<usize>) -> usize {
        let end = span.start.min(self.text.len());
        self.text[..end].matches('\n').count() + 1
    }

    fn error(&mut self, line: Option<usize>, component: Option<&str>, message: String) {
        self.errors.push(TopologyError {
            file: self.file.clone(),
            line,
            component: component.map(str::to_string),
            message,
        });
    }

    fn check(&mut self, cli_flags: &FlagValues, registry: &Registry) -> Vec<Component> {
        let document: TopologyToml = match toml::from_str(self.text) {
            Ok(document) => document,
            Err(error) => {
                let line = error.span().map(|span| self.line_of(span));
                self.error(line, None, error.message().trim().to_string());
                return Vec::new();
            }
        };
        let flags = self.resolve_flags(&document.flags, cli_flags);
        let declared = Declared::of(&document.stages);
        let mut tables: Vec<_> = document.stages.into_iter().collect();
        tables.sort_by_key(|(name, _)| name.span().start);
        let parsed: Vec<Parsed> = tables
            .into_iter()
            .filter_map(|(name, table)| {
                let line = self.line_of(name.span());
                self.parse_component(name.into_inner(), line, table, &flags, registry)
            })
            .collect();
        self.link(parsed, &declared, registry)
    }

    /// The `[flags]` defaults, overridden by the command line.
    fn resolve_flags(
        &mut self,
        declared: &BTreeMap<Spanned<String>, Spanned<toml::Value>>,
        cli_flags: &FlagValues,
    ) -> BTreeMap<String, toml::Value> {
        let mut values = BTreeMap::new();
        let mut lines = HashMap::new();
        for (name, default) in declared {
            let line = self.line_of(name.span());
            if matches!(
                default.get_ref(),
                toml::Value::Array(_) | toml::Value::Table(_)
            ) {
                self.error(
                    Some(line),
                    None,
                    format!(
                        "flag '{}': a default must be a number, boolean or string",
                        name.get_ref()
                    ),
                );
            }
            values.insert(name.get_ref().clone(), default.get_ref().clone());
            lines.insert(name.get_ref().clone(), line);
        }
        for (name, text) in cli_flags.iter() {
            let Some(default) = values.get(name) else {
                let known: Vec<String> = values.keys().map(|k| format!("--{k}")).collect();
                let known = if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                };
                self.error(
                    None,
                    None,
                    format!("unknown flag --{name}; this topology takes: {known}"),
                );
                continue;
            };
            match flags::typed_value(default, text) {
                Ok(value) => {
                    values.insert(name.clone(), value);
                }
                Err(message) => {
                    let line = lines.get(name).copied();
                    self.error(line, None, format!("flag --{name}: {message}"));
                }
            }
        }
        values
    }

    fn parse_component(
        &mut self,
        name: String,
        line: usize,
        table: BTreeMap<Spanned<String>, Spanned<toml::Value>>,
        flags: &BTreeMap<String, toml::Value>,
        registry: &Registry,
    ) -> Option<Parsed> {
        let mut values: BTreeMap<String, (toml::Value, usize)> = BTreeMap::new();
        for (key, value) in table {
            let key_line = self.line_of(key.span());
            match flags::substitute(value.get_ref(), flags) {
                Ok(substituted) => {
                    values.insert(key.into_inner(), (substituted, key_line));
                }
                Err(message) => self.error(
                    Some(key_line),
                    Some(&name),
                    format!("'{}' {message}", key.get_ref()),
                ),
            }
        }
        let kind_name = match values.remove("kind") {
            Some((toml::Value::String(kind), _)) => kind,
            Some((other, kind_line)) => {
                self.error(
                    Some(kind_line),
                    Some(&name),
                    format!("kind must be a string, got {other}"),
                );
                return None;
            }
            None => {
                self.error(
                    Some(line),
                    Some(&name),
                    "has no kind (add kind = \"...\")".to_string(),
                );
                return None;
            }
        };
        let Some(kind) = registry.kind(&kind_name) else {
            let known: Vec<&str> = registry.kinds().map(|k| k.name.as_str()).collect();
            self.error(
                Some(line),
                Some(&name),
                format!(
                    "unknown kind '{kind_name}' (known kinds: {})",
                    known.join(", ")
                ),
            );
            return None;
        };
        let errors_before = self.errors.len();
        let (inputs, inputs_line) = self.inputs(&name, line, values.remove("inputs"));
        let options = self.options(&name, kind, &mut values);
        if kind.is_source() && !inputs.is_empty() {
            self.error(
                Some(inputs_line),
                Some(&name),
                format!("kind '{kind_name}' is a source and takes no inputs"),
            );
        }
        if !kind.is_source() && inputs.is_empty() {
            self.error(
                Some(line),
                Some(&name),
                format!("kind '{kind_name}' needs inputs = [\"...\"]"),
            );
        }
        let mut settings = Settings::new();
        for (key, (value, key_line)) in values {
            settings.insert(&key, value, Some(key_line));
        }
        let plant = match kind.configure(&settings) {
            Ok(plant) => plant,
            Err(error) => {
                let setting_line = error.downcast_ref::<SettingError>().and_then(|e| e.line);
                self.error(
                    setting_line.or(Some(line)),
                    Some(&name),
                    format!("{error:#}"),
                );
                return None;
            }
        };
        for (key, key_line) in settings.unread() {
            self.error(
                key_line,
                Some(&name),
                format!("kind '{kind_name}' has no setting '{key}'"),
            );
        }
        (self.errors.len() == errors_before).then(|| Parsed {
            component: Component {
                name,
                kind: kind_name,
                line,
                inputs,
                options,
                plant,
            },
            inputs_line,
        })
    }

    fn inputs(
        &mut self,
        name: &str,
        line: usize,
        value: Option<(toml::Value, usize)>,
    ) -> (Vec<String>, usize) {
        let Some((value, inputs_line)) = value else {
            return (Vec::new(), line);
        };
        let names = match &value {
            toml::Value::Array(items) => items
                .iter()
                .map(|item| item.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>(),
            _ => None,
        };
        match names {
            Some(names) => (names, inputs_line),
            None => {
                self.error(
                    Some(inputs_line),
                    Some(name),
                    format!("inputs must be a list of component names, got {value}"),
                );
                (Vec::new(), inputs_line)
            }
        }
    }

    /// Reads `parallelism`, `capacity` and `restarts`; the keys left in
    /// `values` are the kind's own settings.
    fn options(
        &mut self,
        name: &str,
        kind: &Kind,
        values: &mut BTreeMap<String, (toml::Value, usize)>,
    ) -> StageOptions {
        let mut options = StageOptions::default();
        if let Some(n) = self.positive(name, "parallelism", values.remove("parallelism"), 1) {
            options.parallelism = n;
        }
        if let Some(capacity) = values.remove("capacity") {
            if kind.is_source() {
                self.error(
                    Some(capacity.1),
                    Some(name),
                    "a source has no input queue, so no capacity".to_string(),
                );
            } else if let Some(n) = self.positive(name, "capacity", Some(capacity), 1) {
                options.capacity = n;
            }
        }
        if let Some(restarts) = values.remove("restarts") {
            if kind.restarts == Restarts::Forbidden {
                let why = if kind.is_source() {
                    "a source".to_string()
                } else {
                    format!("kind '{}' keeps state between items, so it", kind.name)
                };
                self.error(
                    Some(restarts.1),
                    Some(name),
                    format!("{why} cannot be restarted safely"),
                );
            } else if let Some(n) = self.positive(name, "restarts", Some(restarts), 0) {
                options.restarts = u32::try_from(n).unwrap_or(u32::MAX);
            }
        }
        options
    }

    /// An integer of at least `minimum`, or an error at its line.
    fn positive(
        &mut self,
        name: &str,
        key: &str,
        value: Option<(toml::Value, usize)>,
        minimum: i64,
    ) -> Option<usize> {
        let (value, key_line) = value?;
        match value {
            toml::Value::Integer(n) if n >= minimum => usize::try_from(n).ok(),
            other => {
                self.error(
                    Some(key_line),
                    Some(name),
                    format!("{key} must be an integer of at least {minimum}, got {other}"),
                );
                None
            }
        }
    }

    /// Checks the links (inputs exist, types match, each output feeds one
    /// stage unless its items may fan out, every output is used, no cycle)
    /// and orders producers first.
    fn link(
        &mut self,
        parsed: Vec<Parsed>,
        declared: &Declared,
        registry: &Registry,
    ) -> Vec<Component> {
        let index: HashMap<String, usize> = parsed
            .iter()
            .enumerate()
            .map(|(i, p)| (p.component.name.clone(), i))
            .collect();
        let kind_of = |p: &Parsed| registry.kind(&p.component.kind).expect("checked kind");
        let mut consumers_of: Vec<Vec<String>> = vec![Vec::new(); parsed.len()];
        let mut edges: Vec<Vec<usize>> = vec![Vec::new(); parsed.len()];
        for (consumer, p) in parsed.iter().enumerate() {
            let c = &p.component;
            for input in &c.inputs {
                let Some(&producer) = index.get(input) else {
                    if declared.names.contains(input) {
                        continue; // that component has its own error
                    }
                    self.error(
                        Some(p.inputs_line),
                        Some(&c.name),
                        format!("input '{input}' is not a component of this topology"),
                    );
                    continue;
                };
                let (expected, found) = (kind_of(p).input, kind_of(&parsed[producer]).output);
                if let Some(expected) = expected.filter(|t| *t != found) {
                    self.error(
                        Some(p.inputs_line),
                        Some(&c.name),
                        format!(
                            "kind '{}' takes {} but input '{input}' (kind '{}') emits {}",
                            c.kind,
                            expected.name(),
                            parsed[producer].component.kind,
                            found.name()
                        ),
                    );
                }
                match consumers_of[producer].first() {
                    Some(first) if !registry.can_fan_out(found) => {
                        let message = format!(
                            "input '{input}' already feeds '{first}'; its items ({}) go to one \
                             stage, as they cannot be copied to several",
                            found.name()
                        );
                        self.error(Some(p.inputs_line), Some(&c.name), message);
                    }
                    _ => consumers_of[producer].push(c.name.clone()),
                }
                edges[producer].push(consumer);
            }
        }
        for (i, p) in parsed.iter().enumerate() {
            let output = kind_of(p).output;
            let named_by_broken_component = declared.inputs.contains(&p.component.name);
            if consumers_of[i].is_empty() && !output.is_unit() && !named_by_broken_component {
                self.error(
                    Some(p.component.line),
                    Some(&p.component.name),
                    format!(
                        "its output ({}) goes nowhere: no stage lists it in inputs",
                        output.name()
                    ),
                );
            }
        }
        let order = match producers_first(&edges) {
            Ok(order) => order,
            Err(mut cycle) => {
                // Start at the component that comes first in the file.
                let first_at = (0..cycle.len()).min_by_key(|&i| cycle[i]).unwrap_or(0);
                cycle.rotate_left(first_at);
                let names: Vec<&str> = cycle
                    .iter()
                    .map(|&i| parsed[i].component.name.as_str())
                    .collect();
                let first = &parsed[cycle[0]].component;
                let message = format!("is in a cycle: {} -> {}", names.join(" -> "), names[0]);
                self.error(Some(first.line), Some(&first.name.clone()), message);
                return Vec::new();
            }
        };
        let mut slots: Vec<Option<Component>> =
            parsed.into_iter().map(|p| Some(p.component)).collect();
        order.into_iter().filter_map(|i| slots[i].take()).collect()
    }
}

/// What the file declares, read before any component is checked, so that a
/// component with an error does not cause more errors in the ones it links to.
struct Declared {
    names: HashSet<String>,
    /// Every name any component lists in its inputs.
    inputs: HashSet<String>,
}

type StageTables = BTreeMap<Spanned<String>, BTreeMap<Spanned<String>, Spanned<toml::Value>>>;

impl Declared {
    fn of(stages: &StageTables) -> Self {
        let names = stages.keys().map(|name| name.get_ref().clone()).collect();
        let inputs = stages
            .values()
            .filter_map(|table| table.get("inputs"))
            .filter_map(|inputs| inputs.get_ref().as_array())
            .flatten()
            .filter_map(|input| input.as_str().map(str::to_string))
            .collect();
        Declared { names, inputs }
    }
}

/// Orders nodes so every edge goes forward (Kahn's algorithm), or returns
/// the nodes of one cycle in edge order.
fn producers_first(edges: &[Vec<usize>]) -> Result<Vec<usize>, Vec<usize>> {
    let mut incoming = vec![0usize; edges.len()];
    for targets in edges {
        for &t in targets {
            incoming[t] += 1;
        }
    }
    let mut ready: Vec<usize> = (0..edges.len())
        .filter(|&i| incoming[i] == 0)
        .rev()
        .collect();
    let mut order = Vec::with_capacity(edges.len());
    while let Some(node) = ready.pop() {
        order.push(node);
        for &t in &edges[node] {
            incoming[t] -= 1;
            if incoming[t] == 0 {
                ready.push(t);
            }
        }
    }
    if order.len() == edges.len() {
        return Ok(order);
    }
    // Every node left has an incoming edge from another node left, so
    // walking backwards along those edges must revisit a node: a cycle.
    let left: Vec<bool> = incoming.iter().map(|&n| n > 0).collect();
    let mut walk = vec![left.iter().position(|&l| l).expect("a node is left")];
    loop {
        let current = *walk.last().expect("walk is not empty");
        let previous = (0..edges.len())
            .find(|&p| left[p] && edges[p].contains(&current))
            .expect("a node left has a predecessor left");
        if let Some(at) = walk.iter().position(|&n| n == previous) {
            let mut cycle = walk[at..].to_vec();
            cycle.reverse();
            return Err(cycle);
        }
        walk.push(previous);
    }
}
