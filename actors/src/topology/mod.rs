//! Topology files: TOML that names a pipeline's components, their kinds,
//! parallelism, inputs (the links) and queue capacities, may refer to
//! command-line flags, and is checked against a [`Registry`] of kinds before
//! anything runs. See `topologies/README.md` for the format.
//!
//! A file may change another instead of repeating it: `extends = "base.toml"`
//! takes the base's flags and stages, `remove = ["sink"]` takes stages out,
//! and a `[stages.NAME]` table adds a stage or, when the base has one of that
//! name, sets the keys it lists over the base's. Errors name the file and
//! line where the mistake is written, whichever of the files that is.
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
mod sources;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use crate::runtime::{Graph, ItemType, StageOptions};
pub use error::{TopologyError, TopologyErrors};
pub use flags::FlagValues;
use registry::{AllowFanOut, Plant};
pub use registry::{Kind, Registry, Restarts, SettingError, Settings, SIDE_QUEUE_CAPACITY};
pub use sources::{SourceFile, TopologySources};

/// A topology file as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TopologyToml {
    /// The file this one changes (followed by [`TopologySources`]).
    #[serde(default)]
    extends: Option<Spanned<String>>,
    /// Stages of the extended files this one takes out.
    #[serde(default)]
    remove: Vec<Spanned<String>>,
    #[serde(default)]
    flags: BTreeMap<Spanned<String>, Spanned<toml::Value>>,
    #[serde(default)]
    stages: StageTables,
}

/// Where something is written: which of the topology's files (an index into
/// [`TopologySources::files`]) and which line.
#[derive(Clone, Copy, Debug)]
struct Origin {
    file: usize,
    line: usize,
}

/// One checked component, ready to be added to a graph.
struct Component {
    name: String,
    kind: String,
    origin: Origin,
    inputs: Vec<String>,
    /// The producer of its side input, and where it is named.
    side_input: Option<(String, Origin)>,
    options: StageOptions,
    plant: Plant,
}

/// A checked topology: every kind known, every setting read, links typed and
/// acyclic. Components are in an order where producers come first.
pub struct Topology {
    files: Vec<PathBuf>,
    components: Vec<Component>,
    /// The item types that may fan out, for the graph.
    fan_outs: Vec<AllowFanOut>,
}

impl Topology {
    /// Reads and checks the topology in `path` (and the files it extends,
    /// looked for beside it), with `flags` overriding the defaults of its
    /// `[flags]` table.
    pub fn load(
        path: &Path,
        flags: &FlagValues,
        registry: &Registry,
    ) -> Result<Topology, TopologyErrors> {
        Self::check(&TopologySources::read(path, &[])?, flags, registry)
    }

    /// Checks the topology in `text`; `file` names it in errors, and the
    /// files it extends are looked for beside it.
    pub fn parse(
        file: &Path,
        text: &str,
        flags: &FlagValues,
        registry: &Registry,
    ) -> Result<Topology, TopologyErrors> {
        let sources = TopologySources::from_text(file, text.to_string(), &[])?;
        Self::check(&sources, flags, registry)
    }

    /// Checks the topology `sources` were read for.
    pub fn check(
        sources: &TopologySources,
        flags: &FlagValues,
        registry: &Registry,
    ) -> Result<Topology, TopologyErrors> {
        let mut checker = Checker {
            files: sources.files(),
            errors: Vec::new(),
        };
        let components = checker.check(flags, registry);
        let mut errors = checker.errors;
        if errors.is_empty() {
            Ok(Topology {
                files: sources.files().iter().map(|f| f.path.clone()).collect(),
                components,
                fan_outs: registry.fan_out_allowances(),
            })
        } else {
            errors.sort_by_key(|(origin, _)| origin.map(|o| (o.file, o.line)));
            Err(TopologyErrors(errors.into_iter().map(|(_, e)| e).collect()))
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
            let side = component.side_input.as_ref().map(|(name, _)| name.as_str());
            (component.plant)(
                &mut graph,
                &component.name,
                &inputs,
                side,
                component.options,
            )
            .map_err(|error| {
                TopologyErrors(vec![TopologyError {
                    file: self.files[component.origin.file].clone(),
                    line: Some(component.origin.line),
                    component: Some(component.name.clone()),
                    message: error.to_string(),
                }])
            })?;
        }
        Ok(graph)
    }
}

/// Collects every mistake of one topology, with where each is.
struct Checker<'a> {
    files: &'a [SourceFile],
    errors: Vec<(Option<Origin>, TopologyError)>,
}

/// The stages and flags of a topology's files, each file's changes laid
/// over the file it extends.
#[derive(Default)]
struct Merged {
    flags: BTreeMap<String, (toml::Value, Origin)>,
    /// In file order, the bases' stages first.
    stages: Vec<MergedStage>,
}

struct MergedStage {
    name: String,
    /// The table of the last file that wrote one for this stage.
    origin: Origin,
    settings: BTreeMap<String, (toml::Value, Origin)>,
}

/// A component's table once flags are substituted, before linking.
struct Parsed {
    component: Component,
    inputs_origin: Origin,
}

impl Checker<'_> {
    fn origin(&self, file: usize, span: std::ops::Range<usize>) -> Origin {
        Origin {
            file,
            line: sources::line_of(&self.files[file].text, span.start),
        }
    }

    fn error(&mut self, at: Option<Origin>, component: Option<&str>, message: String) {
        let file = self.files[at.map_or(0, |o| o.file)].path.clone();
        self.errors.push((
            at,
            TopologyError {
                file,
                line: at.map(|o| o.line),
                component: component.map(str::to_string),
                message,
            },
        ));
    }

    fn check(&mut self, cli_flags: &FlagValues, registry: &Registry) -> Vec<Component> {
        let Some(merged) = self.merge() else {
            return Vec::new();
        };
        let flags = self.resolve_flags(&merged.flags, cli_flags);
        let declared = Declared::of(&merged.stages);
        let parsed: Vec<Parsed> = merged
            .stages
            .into_iter()
            .filter_map(|stage| self.parse_component(stage, &flags, registry))
            .collect();
        self.link(parsed, &declared, registry)
    }

    /// Lays each file over the one it extends, the last base first.
    fn merge(&mut self) -> Option<Merged> {
        let mut merged = Merged::default();
        for file in (0..self.files.len()).rev() {
            let document: TopologyToml = match toml::from_str(&self.files[file].text) {
                Ok(document) => document,
                Err(error) => {
                    let at = error.span().map(|span| self.origin(file, span));
                    self.error(at, None, error.message().trim().to_string());
                    return None;
                }
            };
            let base = document.extends.map(Spanned::into_inner);
            for name in document.remove {
                let at = self.origin(file, name.span());
                let found = merged.stages.iter().position(|s| s.name == *name.get_ref());
                match (&base, found) {
                    (Some(_), Some(index)) => {
                        merged.stages.remove(index);
                    }
                    (Some(base), None) => self.error(
                        Some(at),
                        None,
                        format!("remove: '{}' is not a stage of {base}", name.get_ref()),
                    ),
                    (None, _) => self.error(
                        Some(at),
                        None,
                        "remove takes stages out of the file named in extends, and this file \
                         extends none"
                            .to_string(),
                    ),
                }
            }
            for (name, default) in document.flags {
                let at = self.origin(file, name.span());
                merged
                    .flags
                    .insert(name.into_inner(), (default.into_inner(), at));
            }
            let mut tables: Vec<_> = document.stages.into_iter().collect();
            tables.sort_by_key(|(name, _)| name.span().start);
            for (name, table) in tables {
                let at = self.origin(file, name.span());
                let settings: Vec<_> = table
                    .into_iter()
                    .map(|(key, value)| {
                        let key_at = self.origin(file, key.span());
                        (key.into_inner(), (value.into_inner(), key_at))
                    })
                    .collect();
                let name = name.into_inner();
                match merged.stages.iter_mut().find(|s| s.name == name) {
                    Some(stage) => {
                        stage.origin = at;
                        stage.settings.extend(settings);
                    }
                    None => merged.stages.push(MergedStage {
                        name,
                        origin: at,
                        settings: settings.into_iter().collect(),
                    }),
                }
            }
        }
        if merged.stages.is_empty() {
            self.error(
                None,
                None,
                "has no stages (add [stages.NAME] tables)".to_string(),
            );
            return None;
        }
        Some(merged)
    }

    /// The `[flags]` defaults, overridden by the command line.
    fn resolve_flags(
        &mut self,
        declared: &BTreeMap<String, (toml::Value, Origin)>,
        cli_flags: &FlagValues,
    ) -> BTreeMap<String, toml::Value> {
        let mut values = BTreeMap::new();
        for (name, (default, at)) in declared {
            if matches!(default, toml::Value::Array(_) | toml::Value::Table(_)) {
                self.error(
                    Some(*at),
                    None,
                    format!("flag '{name}': a default must be a number, boolean or string"),
                );
            }
            values.insert(name.clone(), default.clone());
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
                    let at = declared.get(name).map(|(_, at)| *at);
                    self.error(at, None, format!("flag --{name}: {message}"));
                }
            }
        }
        values
    }

    fn parse_component(
        &mut self,
        stage: MergedStage,
        flags: &BTreeMap<String, toml::Value>,
        registry: &Registry,
    ) -> Option<Parsed> {
        let MergedStage {
            name,
            origin,
            settings: table,
        } = stage;
        let mut values: BTreeMap<String, (toml::Value, Origin)> = BTreeMap::new();
        for (key, (value, key_at)) in table {
            match flags::substitute(&value, flags) {
                Ok(substituted) => {
                    values.insert(key, (substituted, key_at));
                }
                Err(message) => self.error(Some(key_at), Some(&name), format!("'{key}' {message}")),
            }
        }
        let kind_name = match values.remove("kind") {
            Some((toml::Value::String(kind), _)) => kind,
            Some((other, kind_at)) => {
                self.error(
                    Some(kind_at),
                    Some(&name),
                    format!("kind must be a string, got {other}"),
                );
                return None;
            }
            None => {
                self.error(
                    Some(origin),
                    Some(&name),
                    "has no kind (add kind = \"...\")".to_string(),
                );
                return None;
            }
        };
        let Some(kind) = registry.kind(&kind_name) else {
            let known: Vec<&str> = registry.kinds().map(|k| k.name.as_str()).collect();
            self.error(
                Some(origin),
                Some(&name),
                format!(
                    "unknown kind '{kind_name}' (known kinds: {})",
                    known.join(", ")
                ),
            );
            return None;
        };
        let errors_before = self.errors.len();
        let (inputs, inputs_origin) = self.inputs(&name, origin, values.remove("inputs"));
        let side_input = match &kind.side_input {
            Some((setting, _)) => match values.remove(setting) {
                Some((toml::Value::String(producer), at)) => Some((producer, at)),
                Some((other, at)) => {
                    self.error(
                        Some(at),
                        Some(&name),
                        format!("{setting} must name a component, got {other}"),
                    );
                    None
                }
                None => None,
            },
            None => None,
        };
        let options = self.options(&name, kind, &mut values);
        if kind.is_source() && !inputs.is_empty() {
            self.error(
                Some(inputs_origin),
                Some(&name),
                format!("kind '{kind_name}' is a source and takes no inputs"),
            );
        }
        if !kind.is_source() && inputs.is_empty() {
            self.error(
                Some(origin),
                Some(&name),
                format!("kind '{kind_name}' needs inputs = [\"...\"]"),
            );
        }
        let mut settings = Settings::new();
        let mut setting_origins = HashMap::new();
        for (key, (value, key_at)) in values {
            settings.insert(&key, value, Some(key_at.line));
            setting_origins.insert(key, key_at);
        }
        let plant = match kind.configure(&settings) {
            Ok(plant) => plant,
            Err(error) => {
                let setting_at = error
                    .downcast_ref::<SettingError>()
                    .and_then(|e| setting_origins.get(&e.key).copied());
                self.error(
                    setting_at.or(Some(origin)),
                    Some(&name),
                    format!("{error:#}"),
                );
                return None;
            }
        };
        for (key, _) in settings.unread() {
            let key_at = setting_origins.get(&key).copied();
            self.error(
                key_at,
                Some(&name),
                format!("kind '{kind_name}' has no setting '{key}'"),
            );
        }
        (self.errors.len() == errors_before).then(|| Parsed {
            component: Component {
                name,
                kind: kind_name,
                origin,
                inputs,
                side_input,
                options,
                plant,
            },
            inputs_origin,
        })
    }

    fn inputs(
        &mut self,
        name: &str,
        origin: Origin,
        value: Option<(toml::Value, Origin)>,
    ) -> (Vec<String>, Origin) {
        let Some((value, inputs_line)) = value else {
            return (Vec::new(), origin);
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
        values: &mut BTreeMap<String, (toml::Value, Origin)>,
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
        value: Option<(toml::Value, Origin)>,
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
            // (what, producer, the type it must emit, where it is named)
            let mut links: Vec<(&str, &String, Option<ItemType>, Origin)> = c
                .inputs
                .iter()
                .map(|input| ("input", input, kind_of(p).input, p.inputs_origin))
                .collect();
            if let (Some((producer, at)), Some((_, item))) = (&c.side_input, &kind_of(p).side_input)
            {
                links.push(("side input", producer, Some(*item), *at));
            }
            for (what, input, expected, at) in links {
                let Some(&producer) = index.get(input) else {
                    if declared.names.contains(input) {
                        continue; // that component has its own error
                    }
                    self.error(
                        Some(at),
                        Some(&c.name),
                        format!("{what} '{input}' is not a component of this topology"),
                    );
                    continue;
                };
                let found = kind_of(&parsed[producer]).output;
                if let Some(expected) = expected.filter(|t| *t != found) {
                    self.error(
                        Some(at),
                        Some(&c.name),
                        format!(
                            "kind '{}' takes {} but {what} '{input}' (kind '{}') emits {}",
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
                            "{what} '{input}' already feeds '{first}'; its items ({}) go to one \
                             stage, as they cannot be copied to several",
                            found.name()
                        );
                        self.error(Some(at), Some(&c.name), message);
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
                    Some(p.component.origin),
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
                let (at, name) = (first.origin, first.name.clone());
                self.error(Some(at), Some(&name), message);
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
    fn of(stages: &[MergedStage]) -> Self {
        let names = stages.iter().map(|stage| stage.name.clone()).collect();
        let inputs = stages
            .iter()
            .filter_map(|stage| stage.settings.get("inputs"))
            .filter_map(|(inputs, _)| inputs.as_array())
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
