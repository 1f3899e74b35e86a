//! The component kinds clipflow ships, by the names topology files use.
//! Each actor registers itself here; a program embedding clipflow starts from
//! [`standard_registry`] and adds its own kinds with `Registry::register_*`.

use std::time::Duration;

use crate::runtime::generic::{Counter, Null, Work};
use crate::topology::{Registry, Restarts};

/// Every kind clipflow knows.
pub fn standard_registry() -> Registry {
    let mut registry = Registry::new();
    register_generic_kinds(&mut registry);
    registry
}

/// `counter`, `work` and `null`: components for trying the runtime out.
fn register_generic_kinds(registry: &mut Registry) {
    registry.register_source(
        "counter",
        "emits the numbers 0..count (setting: count)",
        |settings| {
            let count = settings.required_u64("count")?;
            Ok(move |worker| Ok(Counter::new(count, worker)))
        },
    );
    registry.register_stage(
        "work",
        "passes numbers through after simulated work (settings: work_us, sleep_us, fail_on)",
        Restarts::Allowed,
        |settings| {
            let stage = Work {
                work: Duration::from_micros(settings.u64("work_us")?.unwrap_or(0)),
                sleep: Duration::from_micros(settings.u64("sleep_us")?.unwrap_or(0)),
                fail_on: settings.u64_list("fail_on")?.unwrap_or_default(),
            };
            Ok(move |_worker| Ok(stage.clone()))
        },
    );
    registry.register_stage(
        "null",
        "drops the numbers it receives (setting: sleep_us)",
        Restarts::Allowed,
        |settings| {
            let sink = Null {
                sleep: Duration::from_micros(settings.u64("sleep_us")?.unwrap_or(0)),
            };
            Ok(move |_worker| Ok(sink.clone()))
        },
    );
}
