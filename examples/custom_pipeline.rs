//! A pipeline built in Rust with one component of its own: numbers from the
//! shipped `Counter` source go through `CollatzSteps` (written here) on four
//! threads, into a sink that keeps the longest chain.
//!
//! The same component is then registered as a kind and run from a topology
//! written in TOML, the way `clipflow run` does it.
//!
//!     cargo run --example custom_pipeline

use std::path::Path;
use std::sync::{Arc, Mutex};

use clipflow_actors::kinds::standard_registry;
use clipflow_actors::runtime::generic::Counter;
use clipflow_actors::runtime::{Emitter, Graph, Stage, StageOptions};
use clipflow_actors::topology::{FlagValues, Restarts, Topology};

/// Maps n to (n, the number of Collatz steps from n + 1 down to 1).
#[derive(Clone)]
struct CollatzSteps;

impl Stage for CollatzSteps {
    type In = u64;
    type Out = (u64, u32);

    fn process(&mut self, n: u64, out: &mut Emitter<(u64, u32)>) -> anyhow::Result<()> {
        let (mut value, mut steps) = (n + 1, 0);
        while value != 1 {
            value = if value % 2 == 0 {
                value / 2
            } else {
                3 * value + 1
            };
            steps += 1;
        }
        out.emit((n + 1, steps))?;
        Ok(())
    }
}

/// Keeps the start with the most steps.
struct Longest(Arc<Mutex<(u64, u32)>>);

impl Stage for Longest {
    type In = (u64, u32);
    type Out = ();

    fn process(&mut self, item: (u64, u32), _out: &mut Emitter<()>) -> anyhow::Result<()> {
        let mut best = self.0.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
        if item.1 > best.1 {
            *best = item;
        }
        Ok(())
    }
}

fn main() -> anyhow::Result<()> {
    let longest = Arc::new(Mutex::new((0, 0)));
    let mut graph = Graph::new();
    graph.add_source("numbers", StageOptions::default(), |worker| {
        Ok(Counter::new(1_000_000, worker))
    })?;
    let parallel = StageOptions {
        parallelism: 4,
        capacity: 1024,
        restarts: 0,
    };
    graph.add_stage("collatz", &["numbers"], parallel, |_| Ok(CollatzSteps))?;
    let best = Arc::clone(&longest);
    graph.add_stage(
        "longest",
        &["collatz"],
        StageOptions::default(),
        move |_| Ok(Longest(Arc::clone(&best))),
    )?;
    let report = graph.run()?;
    let (start, steps) = *longest.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
    println!("{report}\nlongest chain below 1,000,001 starts at {start}: {steps} steps\n");

    // The same stage as a kind a topology file can name.
    let mut registry = standard_registry();
    registry.register_stage(
        "collatz",
        "numbers to (start, Collatz steps)",
        Restarts::Allowed,
        |_settings| Ok(|_worker| Ok(CollatzSteps)),
    );
    registry.register_stage(
        "drop-pairs",
        "drops (start, steps) pairs",
        Restarts::Allowed,
        |_settings| Ok(|_worker| Ok(Longest(Arc::new(Mutex::new((0, 0)))))),
    );
    let topology = r#"
        [flags]
        workers = 2

        [stages.numbers]
        kind = "counter"
        count = 100000

        [stages.collatz]
        kind = "collatz"
        inputs = ["numbers"]
        parallelism = "${workers}"

        [stages.sink]
        kind = "drop-pairs"
        inputs = ["collatz"]
    "#;
    let mut flags = FlagValues::new();
    flags.set("workers", "4");
    let topology = Topology::parse(Path::new("inline.toml"), topology, &flags, &registry)?;
    println!("{}", topology.into_graph()?.run()?);
    Ok(())
}
