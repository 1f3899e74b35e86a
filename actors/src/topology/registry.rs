//! The registry of component kinds a topology file can name: for each kind,
//! its role (source or stage), the item types it takes and emits (so links
//! can be type-checked before anything runs), whether it may be restarted,
//! and how to build it from its settings; and the item types whose outputs
//! may fan out to several stages.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};

use crate::runtime::{
    Graph, GraphError, ItemType, SideInput, Source, Stage, StageOptions, WorkerInfo,
};

/// Adds one configured component to a graph: (graph, name, inputs, the
/// producer of its side input, options).
pub(crate) type Plant = Box<
    dyn FnOnce(&mut Graph, &str, &[&str], Option<&str>, StageOptions) -> Result<(), GraphError>,
>;
type Configure = Box<dyn Fn(&Settings) -> anyhow::Result<Plant> + Send + Sync>;

/// Items a side queue holds: the one being used and the next.
pub const SIDE_QUEUE_CAPACITY: usize = 2;

/// Whether a stage's failed worker may be restarted (`restarts = N`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Restarts {
    /// The stage keeps no state between items: a fresh instance carries on.
    Allowed,
    /// The stage accumulates state (a batch, a file): restarting would lose it.
    Forbidden,
}

/// One component kind.
pub struct Kind {
    pub name: String,
    pub summary: String,
    /// `None` for a source.
    pub input: Option<ItemType>,
    pub output: ItemType,
    /// The setting that names the producer of the kind's side input, and
    /// the type of its items (see [`crate::runtime::SideInput`]).
    pub side_input: Option<(String, ItemType)>,
    pub restarts: Restarts,
    configure: Configure,
}

impl Kind {
    pub fn is_source(&self) -> bool {
        self.input.is_none()
    }

    /// Reads the kind's settings and returns how to add it to a graph.
    pub(crate) fn configure(&self, settings: &Settings) -> anyhow::Result<Plant> {
        (self.configure)(settings)
    }
}

/// Component kinds by name. [`crate::kinds::standard_registry`] holds the
/// kinds clipflow ships; a program embedding clipflow can add its own.
#[derive(Default)]
pub struct Registry {
    kinds: BTreeMap<String, Kind>,
    /// Item types an output of which may feed several stages, with what
    /// lets a graph copy them.
    fan_outs: Vec<(ItemType, AllowFanOut)>,
}

/// Tells a graph that it may copy one item type to several stages.
pub(crate) type AllowFanOut = fn(&mut Graph);

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a source kind. `configure` reads the settings of one
    /// component and returns the function that builds an instance per
    /// worker. A later registration of the same name replaces the earlier.
    pub fn register_source<S, M, C>(&mut self, kind: &str, summary: &str, configure: C)
    where
        S: Source,
        M: Fn(WorkerInfo) -> anyhow::Result<S> + Send + Sync + 'static,
        C: Fn(&Settings) -> anyhow::Result<M> + Send + Sync + 'static,
    {
        let configure: Configure = Box::new(move |settings| {
            let make = configure(settings)?;
            let plant: Plant = Box::new(move |graph, name, _inputs, _side, options| {
                graph.add_source(name, options, make)
            });
            Ok(plant)
        });
        self.insert(Kind {
            name: kind.to_string(),
            summary: summary.to_string(),
            input: None,
            output: ItemType::of::<S::Out>(),
            side_input: None,
            restarts: Restarts::Forbidden,
            configure,
        });
    }

    /// Registers a stage kind (a sink is a stage whose `Out` is `()`).
    pub fn register_stage<S, M, C>(
        &mut self,
        kind: &str,
        summary: &str,
        restarts: Restarts,
        configure: C,
    ) where
        S: Stage,
        M: Fn(WorkerInfo) -> anyhow::Result<S> + Send + Sync + 'static,
        C: Fn(&Settings) -> anyhow::Result<M> + Send + Sync + 'static,
    {
        let configure: Configure = Box::new(move |settings| {
            let make = configure(settings)?;
            let plant: Plant = Box::new(move |graph, name, inputs, _side, options| {
                graph.add_stage(name, inputs, options, make)
            });
            Ok(plant)
        });
        self.insert_stage::<S>(kind, summary, None, restarts, configure);
    }

    /// Registers a stage kind that may also read a side queue of `T`s
    /// (a [`SideInput`]): the setting `side_input` names its producer, and
    /// the queue holds [`SIDE_QUEUE_CAPACITY`] items (side inputs carry
    /// batches, so the queues before the producer do the buffering).
    /// `make` gets the side input, or `None` where the topology names no
    /// producer.
    pub fn register_stage_with_side_input<S, T, M, C>(
        &mut self,
        kind: &str,
        summary: &str,
        side_input: &str,
        restarts: Restarts,
        configure: C,
    ) where
        S: Stage,
        T: Send + 'static,
        M: Fn(WorkerInfo, Option<SideInput<T>>) -> anyhow::Result<S> + Send + Sync + 'static,
        C: Fn(&Settings) -> anyhow::Result<M> + Send + Sync + 'static,
    {
        let configure: Configure = Box::new(move |settings| {
            let make = configure(settings)?;
            let plant: Plant = Box::new(move |graph, name, inputs, side, options| {
                let side = match side {
                    Some(producer) => {
                        Some(graph.add_side_queue::<T>(name, producer, SIDE_QUEUE_CAPACITY)?)
                    }
                    None => None,
                };
                graph.add_stage(name, inputs, options, move |worker| {
                    make(worker, side.clone())
                })
            });
            Ok(plant)
        });
        let side_input = Some((side_input.to_string(), ItemType::of::<T>()));
        self.insert_stage::<S>(kind, summary, side_input, restarts, configure);
    }

    fn insert_stage<S: Stage>(
        &mut self,
        kind: &str,
        summary: &str,
        side_input: Option<(String, ItemType)>,
        restarts: Restarts,
        configure: Configure,
    ) {
        self.insert(Kind {
            name: kind.to_string(),
            summary: summary.to_string(),
            input: Some(ItemType::of::<S::In>()),
            output: ItemType::of::<S::Out>(),
            side_input,
            restarts,
            configure,
        });
    }

    pub fn kind(&self, name: &str) -> Option<&Kind> {
        self.kinds.get(name)
    }

    /// Lets an output of items of type `T` be listed in the inputs of
    /// several stages, each of which then gets a copy of every item.
    pub fn allow_fan_out<T: Clone + Send + 'static>(&mut self) {
        let item = ItemType::of::<T>();
        if !self.can_fan_out(item) {
            self.fan_outs.push((item, Graph::allow_fan_out::<T>));
        }
    }

    /// Whether an output of `item`s may feed several stages.
    pub fn can_fan_out(&self, item: ItemType) -> bool {
        self.fan_outs.iter().any(|(allowed, _)| *allowed == item)
    }

    /// What tells a graph about every item type that may fan out.
    pub(crate) fn fan_out_allowances(&self) -> Vec<AllowFanOut> {
        self.fan_outs.iter().map(|(_, allow)| *allow).collect()
    }

    /// Every kind, by name.
    pub fn kinds(&self) -> impl Iterator<Item = &Kind> {
        self.kinds.values()
    }

    fn insert(&mut self, kind: Kind) {
        self.kinds.insert(kind.name.clone(), kind);
    }
}

/// A bad value of one setting, with the line it is on.
#[derive(Debug, thiserror::Error)]
#[error("setting '{key}': {message}")]
pub struct SettingError {
    pub key: String,
    pub line: Option<usize>,
    pub message: String,
}

/// The kind-specific settings of one component (every key of its table but
/// `kind`, `inputs`, `parallelism`, `capacity` and `restarts`), with flags
/// already substituted. Keys a kind never reads are reported as unknown.
#[derive(Debug, Default)]
pub struct Settings {
    values: BTreeMap<String, (toml::Value, Option<usize>)>,
    read: RefCell<BTreeSet<String>>,
}

impl Settings {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a setting (`line` is where it appears in its file, if it has one).
    pub fn insert(&mut self, key: &str, value: toml::Value, line: Option<usize>) {
        self.values.insert(key.to_string(), (value, line));
    }

    fn get(&self, key: &str) -> Option<&(toml::Value, Option<usize>)> {
        self.read.borrow_mut().insert(key.to_string());
        self.values.get(key)
    }

    /// The line a setting is on, if it is present and has one.
    fn line(&self, key: &str) -> Option<usize> {
        self.values.get(key).and_then(|(_, line)| *line)
    }

    fn error(&self, key: &str, line: Option<usize>, message: String) -> SettingError {
        SettingError {
            key: key.to_string(),
            line,
            message,
        }
    }

    /// A non-negative integer.
    pub fn u64(&self, key: &str) -> Result<Option<u64>, SettingError> {
        match self.get(key) {
            None => Ok(None),
            Some((toml::Value::Integer(n), line)) => u64::try_from(*n)
                .map(Some)
                .map_err(|_| self.error(key, *line, format!("must not be negative, got {n}"))),
            Some((other, line)) => Err(self.error(
                key,
                *line,
                format!("expected a non-negative integer, got {other}"),
            )),
        }
    }

    /// A non-negative integer that must be given.
    pub fn required_u64(&self, key: &str) -> Result<u64, SettingError> {
        self.u64(key)?
            .ok_or_else(|| self.error(key, None, "is required".to_string()))
    }

    /// A string.
    pub fn string(&self, key: &str) -> Result<Option<String>, SettingError> {
        match self.get(key) {
            None => Ok(None),
            Some((toml::Value::String(s), _)) => Ok(Some(s.clone())),
            Some((other, line)) => {
                Err(self.error(key, *line, format!("expected a string, got {other}")))
            }
        }
    }

    /// A string where empty (or blank) text means "not given", as a
    /// `"${flag}"` whose flag was left at `""` gives.
    pub fn non_empty_string(&self, key: &str) -> Result<Option<String>, SettingError> {
        Ok(self.string(key)?.filter(|text| !text.trim().is_empty()))
    }

    /// A non-empty string (see [`Settings::non_empty_string`]) read by
    /// `parse`; its error becomes this setting's error, with its line.
    pub fn parsed<T>(
        &self,
        key: &str,
        parse: impl FnOnce(&str) -> anyhow::Result<T>,
    ) -> Result<Option<T>, SettingError> {
        let Some(text) = self.non_empty_string(key)? else {
            return Ok(None);
        };
        parse(&text)
            .map(Some)
            .map_err(|error| self.error(key, self.line(key), format!("{error:#}")))
    }

    /// A switch: a TOML boolean, or the text a `"${flag}"` substitution
    /// yields: `true`/`false` (any case), `1`/`0`, `yes`/`no`; empty text
    /// counts as not given.
    pub fn bool(&self, key: &str) -> Result<Option<bool>, SettingError> {
        let Some((value, line)) = self.get(key) else {
            return Ok(None);
        };
        let text = match value {
            toml::Value::Boolean(yes) => return Ok(Some(*yes)),
            toml::Value::String(text) => text.trim().to_ascii_lowercase(),
            _ => String::new(),
        };
        match (value, text.as_str()) {
            (toml::Value::String(_), "") => Ok(None),
            (_, "true" | "1" | "yes") => Ok(Some(true)),
            (_, "false" | "0" | "no") => Ok(Some(false)),
            _ => Err(self.error(key, *line, format!("expected true or false, got {value}"))),
        }
    }

    /// A finite number: a TOML float or integer, or its text (`"0.25"`, as
    /// a `"${flag}"` substitution yields); empty text counts as not given.
    pub fn f64(&self, key: &str) -> Result<Option<f64>, SettingError> {
        let Some((value, line)) = self.get(key) else {
            return Ok(None);
        };
        let number = match value {
            toml::Value::Float(x) => Some(*x),
            toml::Value::Integer(n) => Some(*n as f64),
            toml::Value::String(text) if text.trim().is_empty() => return Ok(None),
            toml::Value::String(text) => text.trim().parse().ok(),
            _ => None,
        };
        match number {
            Some(x) if x.is_finite() => Ok(Some(x)),
            _ => Err(self.error(key, *line, format!("expected a number, got {value}"))),
        }
    }

    /// A number within `range` (see [`Settings::f64`]).
    pub fn f64_in(
        &self,
        key: &str,
        range: std::ops::RangeInclusive<f64>,
    ) -> Result<Option<f64>, SettingError> {
        match self.f64(key)? {
            Some(x) if !range.contains(&x) => Err(self.error(
                key,
                self.line(key),
                format!(
                    "expected a number from {} to {}, got {x}",
                    range.start(),
                    range.end()
                ),
            )),
            number => Ok(number),
        }
    }

    /// A list of non-negative integers.
    pub fn u64_list(&self, key: &str) -> Result<Option<Vec<u64>>, SettingError> {
        match self.get(key) {
            None => Ok(None),
            Some((toml::Value::Array(items), line)) => items
                .iter()
                .map(|item| {
                    item.as_integer()
                        .and_then(|n| u64::try_from(n).ok())
                        .ok_or_else(|| {
                            self.error(
                                key,
                                *line,
                                format!("expected non-negative integers, got {item}"),
                            )
                        })
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Some),
            Some((other, line)) => Err(self.error(
                key,
                *line,
                format!("expected a list of integers, got {other}"),
            )),
        }
    }

    /// Keys present but never read, with their lines.
    pub(crate) fn unread(&self) -> Vec<(String, Option<usize>)> {
        let read = self.read.borrow();
        self.values
            .iter()
            .filter(|(key, _)| !read.contains(*key))
            .map(|(key, (_, line))| (key.clone(), *line))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Settings holding `key = value` on line 7.
    fn one(key: &str, value: toml::Value) -> Settings {
        let mut settings = Settings::new();
        settings.insert(key, value, Some(7));
        settings
    }

    #[test]
    fn bool_takes_toml_booleans_and_the_text_of_substituted_flags() {
        assert_eq!(one("on", true.into()).bool("on").unwrap(), Some(true));
        for (text, expected) in [
            ("true", Some(true)),
            ("No", Some(false)),
            ("0", Some(false)),
        ] {
            assert_eq!(one("on", text.into()).bool("on").unwrap(), expected);
        }
        assert_eq!(one("on", " ".into()).bool("on").unwrap(), None);
        assert_eq!(Settings::new().bool("on").unwrap(), None);
        for bad in ["maybe".into(), toml::Value::Integer(2)] {
            let error = one("on", bad).bool("on").unwrap_err();
            assert_eq!((error.key.as_str(), error.line), ("on", Some(7)));
            assert!(error.message.contains("true or false"), "{error}");
        }
    }

    #[test]
    fn f64_takes_toml_numbers_and_their_text() {
        assert_eq!(one("x", 0.25.into()).f64("x").unwrap(), Some(0.25));
        assert_eq!(one("x", 1.into()).f64("x").unwrap(), Some(1.0));
        assert_eq!(one("x", " 0.5 ".into()).f64("x").unwrap(), Some(0.5));
        assert_eq!(one("x", "".into()).f64("x").unwrap(), None);
        for bad in ["a quarter".into(), "inf".into(), toml::Value::Boolean(true)] {
            let error = one("x", bad).f64("x").unwrap_err();
            assert_eq!(error.line, Some(7));
            assert!(error.message.contains("expected a number"), "{error}");
        }
        assert_eq!(
            one("x", "1".into()).f64_in("x", 0.0..=1.0).unwrap(),
            Some(1.0)
        );
        let error = one("x", 1.5.into()).f64_in("x", 0.0..=1.0).unwrap_err();
        assert_eq!(error.line, Some(7));
        assert!(error.message.contains("from 0 to 1"), "{error}");
    }

    #[test]
    fn parsed_gives_the_parser_error_the_setting_line() {
        let settings = one("mode", "fast".into());
        let error = settings
            .parsed("mode", |text| -> anyhow::Result<()> {
                anyhow::bail!("no mode {text}")
            })
            .unwrap_err();
        assert_eq!(
            (error.line, error.message.as_str()),
            (Some(7), "no mode fast")
        );
        assert_eq!(
            one("mode", "".into()).parsed("mode", |_| Ok(1)).unwrap(),
            None
        );
    }
}
