//! The dataflow runtime built in Rust: backpressure bounds the items in
//! flight, end-of-stream reaches every stage (also across merged inputs),
//! a failing stage stops the graph with its name and leaves no thread behind,
//! a stateless stage is restarted, the counters add up, and a fan-out gives
//! each of its stages every item (only for item types it may copy), and a
//! side input is read at its stage's pace, bounding its source.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use clipflow_actors::runtime::generic::{Counter, Null, Work};
use clipflow_actors::runtime::{
    Emitter, Graph, GraphError, RunError, RunReport, SideInput, Source, Stage, StageOptions,
};

/// Runs `graph` on another thread; panics if it has not ended within a
/// generous limit, which is how a hanging thread or lost wake-up shows.
fn run_within(graph: Graph, limit: Duration) -> Result<RunReport, RunError> {
    let (done, result) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(graph.run());
    });
    result
        .recv_timeout(limit)
        .expect("the graph did not stop in time")
}

const LIMIT: Duration = Duration::from_secs(60);

fn options(parallelism: usize, capacity: usize) -> StageOptions {
    StageOptions {
        parallelism,
        capacity,
        restarts: 0,
    }
}

/// Counts the live instances of a component: +1 when built, -1 when dropped
/// (which happens when its worker thread ends).
#[derive(Clone, Default)]
struct Instances(Arc<AtomicUsize>);

struct Tracked(Arc<AtomicUsize>);

impl Instances {
    fn track(&self) -> Tracked {
        self.0.fetch_add(1, Ordering::SeqCst);
        Tracked(Arc::clone(&self.0))
    }
    fn live(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Emits `count` numbers (or forever when `None`), counting them once sent.
struct Numbers {
    count: Option<u64>,
    sent: Arc<AtomicU64>,
    _tracked: Tracked,
}

impl Source for Numbers {
    type Out = u64;
    fn run(&mut self, out: &mut Emitter<u64>) -> anyhow::Result<()> {
        let mut n = 0;
        while self.count.is_none_or(|count| n < count) {
            out.emit(n)?;
            self.sent.fetch_add(1, Ordering::SeqCst);
            n += 1;
        }
        Ok(())
    }
}

/// A slow sink that records the largest number of items sent by the source
/// but not yet received here.
struct SlowSink {
    sent: Arc<AtomicU64>,
    received: u64,
    max_in_flight: Arc<AtomicU64>,
}

impl Stage for SlowSink {
    type In = u64;
    type Out = ();
    fn process(&mut self, _item: u64, _out: &mut Emitter<()>) -> anyhow::Result<()> {
        self.received += 1;
        let in_flight = self
            .sent
            .load(Ordering::SeqCst)
            .saturating_sub(self.received);
        self.max_in_flight.fetch_max(in_flight, Ordering::SeqCst);
        std::thread::sleep(Duration::from_micros(300));
        Ok(())
    }
}

/// Adds `numbers`, a source of `count` numbers that counts them in `sent`.
fn add_numbers(graph: &mut Graph, count: u64, sent: &Arc<AtomicU64>, instances: &Instances) {
    let (sent, instances) = (Arc::clone(sent), instances.clone());
    graph
        .add_source("numbers", options(1, 1), move |_| {
            Ok(Numbers {
                count: Some(count),
                sent: Arc::clone(&sent),
                _tracked: instances.track(),
            })
        })
        .unwrap();
}

/// Adds a [`SlowSink`] `(name, input, capacity)`.
fn add_slow_sink(
    graph: &mut Graph,
    (name, input, capacity): (&str, &str, usize),
    sent: &Arc<AtomicU64>,
    max_in_flight: &Arc<AtomicU64>,
) {
    let (sent, max_in_flight) = (Arc::clone(sent), Arc::clone(max_in_flight));
    graph
        .add_stage(name, &[input], options(1, capacity), move |_| {
            Ok(SlowSink {
                sent: Arc::clone(&sent),
                received: 0,
                max_in_flight: Arc::clone(&max_in_flight),
            })
        })
        .unwrap();
}

#[test]
fn a_slow_sink_bounds_the_items_in_flight() {
    let sent = Arc::new(AtomicU64::new(0));
    let max_in_flight = Arc::new(AtomicU64::new(0));
    let instances = Instances::default();
    let mut graph = Graph::new();
    add_numbers(&mut graph, 2000, &sent, &instances);
    graph
        .add_stage("middle", &["numbers"], options(2, 4), |_| {
            Ok(Work::default())
        })
        .unwrap();
    add_slow_sink(&mut graph, ("sink", "middle", 8), &sent, &max_in_flight);
    let report = run_within(graph, LIMIT).unwrap();
    // Between the source and the sink an item can only be in the middle
    // stage's queue (4), in a middle worker's hands (2) or in the sink's
    // queue (8).
    let bound = 4 + 2 + 8;
    let max = max_in_flight.load(Ordering::SeqCst);
    assert!(max <= bound, "{max} items in flight, more than {bound}");
    // The sink is the slow one, so the queues did fill up to near the bound.
    assert!(
        max >= 8,
        "only {max} items in flight: backpressure never engaged"
    );
    assert_eq!(report.stage("sink").unwrap().items_in, 2000);
    assert_eq!(report.bottleneck().unwrap().name, "sink");
    assert!(report.stage("numbers").unwrap().wait_output > Duration::ZERO);
    assert_eq!(instances.live(), 0);
}

/// Sums what it receives and emits the sum when its input ends.
struct Sum {
    total: u64,
    finished: Arc<AtomicUsize>,
    _tracked: Tracked,
}

impl Stage for Sum {
    type In = u64;
    type Out = u64;
    fn process(&mut self, item: u64, _out: &mut Emitter<u64>) -> anyhow::Result<()> {
        self.total += item;
        Ok(())
    }
    fn finish(&mut self, out: &mut Emitter<u64>) -> anyhow::Result<()> {
        self.finished.fetch_add(1, Ordering::SeqCst);
        out.emit(self.total)?;
        Ok(())
    }
}

struct Collect(Arc<Mutex<Vec<u64>>>);

impl Stage for Collect {
    type In = u64;
    type Out = ();
    fn process(&mut self, item: u64, _out: &mut Emitter<()>) -> anyhow::Result<()> {
        self.0.lock().unwrap().push(item);
        Ok(())
    }
}

#[test]
fn end_of_stream_reaches_every_worker_after_all_producers_finish() {
    let instances = Instances::default();
    let finished = Arc::new(AtomicUsize::new(0));
    let collected = Arc::new(Mutex::new(Vec::new()));
    let mut graph = Graph::new();
    graph
        .add_source("small", options(3, 1), |worker| {
            Ok(Counter::new(1000, worker))
        })
        .unwrap();
    graph
        .add_source("large", options(2, 1), |worker| {
            Ok(Counter::new(5000, worker))
        })
        .unwrap();
    let (sum_finished, tracker) = (Arc::clone(&finished), instances.clone());
    graph
        .add_stage("sum", &["small", "large"], options(4, 16), move |_| {
            Ok(Sum {
                total: 0,
                finished: Arc::clone(&sum_finished),
                _tracked: tracker.track(),
            })
        })
        .unwrap();
    let sink_items = Arc::clone(&collected);
    graph
        .add_stage("collect", &["sum"], options(1, 16), move |_| {
            Ok(Collect(Arc::clone(&sink_items)))
        })
        .unwrap();
    let report = run_within(graph, LIMIT).unwrap();
    // Each sum worker saw its input end exactly once, after both sources
    // (all five workers) had finished: together they saw every number.
    assert_eq!(finished.load(Ordering::SeqCst), 4);
    let partial_sums = collected.lock().unwrap().clone();
    assert_eq!(partial_sums.len(), 4);
    let expected = (0..1000u64).sum::<u64>() + (0..5000u64).sum::<u64>();
    assert_eq!(partial_sums.iter().sum::<u64>(), expected);
    assert_eq!(report.stage("sum").unwrap().items_in, 6000);
    // Every worker thread was joined, so every instance was dropped.
    assert_eq!(instances.live(), 0);
}

/// Fails (or panics) when it sees item `at`.
struct Explode {
    at: u64,
    panic: bool,
    _tracked: Tracked,
}

impl Stage for Explode {
    type In = u64;
    type Out = u64;
    fn process(&mut self, item: u64, out: &mut Emitter<u64>) -> anyhow::Result<()> {
        if item == self.at {
            if self.panic {
                panic!("boom at {item}");
            }
            anyhow::bail!("bad item {item}");
        }
        out.emit(item)?;
        Ok(())
    }
}

/// An endless source, a stage that fails at item 100 and a sink: the run
/// must end with an error naming the stage, with every thread gone.
fn failing_graph(panic: bool, instances: &Instances) -> Graph {
    let mut graph = Graph::new();
    let tracker = instances.clone();
    graph
        .add_source("endless", options(1, 1), move |_| {
            Ok(Numbers {
                count: None,
                sent: Arc::new(AtomicU64::new(0)),
                _tracked: tracker.track(),
            })
        })
        .unwrap();
    let tracker = instances.clone();
    graph
        .add_stage("explode", &["endless"], options(3, 8), move |_| {
            Ok(Explode {
                at: 100,
                panic,
                _tracked: tracker.track(),
            })
        })
        .unwrap();
    graph
        .add_stage("sink", &["explode"], options(2, 8), |_| {
            Ok(Null {
                sleep: Duration::from_micros(50),
            })
        })
        .unwrap();
    graph
}

#[test]
fn a_failing_stage_stops_the_graph_with_its_name_and_no_thread_left() {
    for panic in [false, true] {
        let instances = Instances::default();
        let error = run_within(failing_graph(panic, &instances), LIMIT).unwrap_err();
        let RunError::StageFailed {
            stage,
            error,
            report,
        } = error
        else {
            panic!("expected a stage failure, got {error}");
        };
        assert_eq!(stage, "explode");
        let expected = if panic {
            "panicked: boom at 100"
        } else {
            "bad item 100"
        };
        assert!(format!("{error:#}").contains(expected), "{error:#}");
        assert_eq!(report.stage("explode").unwrap().errors, 1);
        assert_eq!(instances.live(), 0, "a worker thread outlived the run");
    }
}

#[test]
fn a_stateless_stage_is_restarted_within_its_budget() {
    let graph_with_restarts = |restarts| {
        let mut graph = Graph::new();
        graph
            .add_source("numbers", options(1, 1), |worker| {
                Ok(Counter::new(100, worker))
            })
            .unwrap();
        let work = StageOptions {
            parallelism: 2,
            capacity: 8,
            restarts,
        };
        graph
            .add_stage("work", &["numbers"], work, |_| {
                Ok(Work {
                    fail_on: vec![10, 20, 30],
                    ..Work::default()
                })
            })
            .unwrap();
        graph
            .add_stage("sink", &["work"], options(1, 8), |_| Ok(Null::default()))
            .unwrap();
        graph
    };

    let report = run_within(graph_with_restarts(3), LIMIT).unwrap();
    let work = report.stage("work").unwrap();
    assert_eq!((work.restarts, work.errors), (3, 3));
    assert_eq!((work.items_in, work.items_out), (100, 97));
    assert_eq!(report.stage("sink").unwrap().items_in, 97);

    let error = run_within(graph_with_restarts(2), LIMIT).unwrap_err();
    assert!(
        matches!(&error, RunError::StageFailed { stage, .. } if stage == "work"),
        "{error}"
    );
    assert!(
        error.to_string().contains("item 30 is in fail_on"),
        "{error}"
    );
}

#[test]
fn counters_add_up() {
    let mut graph = Graph::new();
    graph
        .add_source("numbers", options(2, 1), |worker| {
            Ok(Counter::new(500, worker))
        })
        .unwrap();
    graph
        .add_stage("work", &["numbers"], options(2, 32), |_| {
            Ok(Work {
                work: Duration::from_micros(200),
                ..Work::default()
            })
        })
        .unwrap();
    graph
        .add_stage("sink", &["work"], options(1, 32), |_| Ok(Null::default()))
        .unwrap();
    let report = run_within(graph, LIMIT).unwrap();
    let numbers = report.stage("numbers").unwrap();
    let work = report.stage("work").unwrap();
    let sink = report.stage("sink").unwrap();
    assert_eq!((numbers.items_in, numbers.items_out), (0, 500));
    assert_eq!((work.items_in, work.items_out), (500, 500));
    assert_eq!((sink.items_in, sink.items_out), (500, 0));
    assert_eq!(work.errors + work.restarts + sink.errors, 0);
    // 500 items of 200 us of spinning each: at least 0.1 s busy in total.
    assert!(work.busy >= Duration::from_millis(100), "{:?}", work.busy);
    assert_eq!(report.bottleneck().unwrap().name, "work");
    assert!(work.mean_queue_len.is_some() && work.capacity == Some(32));
    let table = report.to_string();
    assert!(
        table.contains("work") && table.contains("<- bottleneck"),
        "{table}"
    );
}

#[test]
fn mistakes_in_building_a_graph_are_named() {
    let mut graph = Graph::new();
    graph
        .add_source("numbers", StageOptions::default(), |w| {
            Ok(Counter::new(1, w))
        })
        .unwrap();
    let unknown = graph.add_stage("sink", &["nope"], StageOptions::default(), |_| {
        Ok(Null::default())
    });
    assert!(matches!(unknown, Err(GraphError::UnknownInput { ref input, .. }) if input == "nope"));
    let mismatch = graph.add_stage("collect", &["numbers"], StageOptions::default(), |_| {
        Ok(Strings)
    });
    assert_eq!(
        mismatch,
        Err(GraphError::TypeMismatch {
            stage: "collect".into(),
            input: "numbers".into(),
            expected: "String".into(),
            found: "u64".into(),
        })
    );
    let restarts = StageOptions {
        restarts: 1,
        ..StageOptions::default()
    };
    let source_restart = graph.add_source("again", restarts, |w| Ok(Counter::new(1, w)));
    assert!(matches!(
        source_restart,
        Err(GraphError::SourceRestarts { .. })
    ));
    // The counter's output feeds nothing yet, so the graph cannot run.
    let dangling = graph.run().unwrap_err();
    assert!(
        matches!(&dangling, RunError::Invalid(GraphError::DanglingOutput { stage, .. }) if stage == "numbers"),
        "{dangling}"
    );
}

struct Strings;

impl Stage for Strings {
    type In = String;
    type Out = ();
    fn process(&mut self, _item: String, _out: &mut Emitter<()>) -> anyhow::Result<()> {
        Ok(())
    }
}

#[test]
fn a_fan_out_gives_every_stage_every_item_at_the_slowest_ones_pace() {
    let sent = Arc::new(AtomicU64::new(0));
    let max_in_flight = Arc::new(AtomicU64::new(0));
    let instances = Instances::default();
    let mut graph = Graph::new();
    graph.allow_fan_out::<u64>();
    add_numbers(&mut graph, 500, &sent, &instances);
    let collected = Arc::new(Mutex::new(Vec::new()));
    let into = Arc::clone(&collected);
    graph
        .add_stage("collect", &["numbers"], options(1, 64), move |_| {
            Ok(Collect(Arc::clone(&into)))
        })
        .unwrap();
    add_slow_sink(&mut graph, ("slow", "numbers", 4), &sent, &max_in_flight);
    let report = run_within(graph, LIMIT).unwrap();
    assert_eq!(*collected.lock().unwrap(), (0..500).collect::<Vec<u64>>());
    assert_eq!(report.stage("slow").unwrap().items_in, 500);
    assert_eq!(report.stage("numbers").unwrap().items_out, 500);
    // The slow sibling's queue (4) bounds what the source runs ahead of it,
    // however fast the other one is.
    let max = max_in_flight.load(Ordering::SeqCst);
    assert!(max <= 4 + 1, "{max} items ahead of the slow stage");
    assert_eq!(instances.live(), 0);
}

#[test]
fn an_output_whose_items_cannot_be_copied_feeds_one_stage() {
    let mut graph = Graph::new();
    graph
        .add_source("numbers", StageOptions::default(), |w| {
            Ok(Counter::new(1, w))
        })
        .unwrap();
    graph
        .add_stage("first", &["numbers"], StageOptions::default(), |_| {
            Ok(Null::default())
        })
        .unwrap();
    let second = graph.add_stage("second", &["numbers"], StageOptions::default(), |_| {
        Ok(Null::default())
    });
    assert_eq!(
        second,
        Err(GraphError::OutputTaken {
            producer: "numbers".into(),
            first: "first".into(),
            second: "second".into(),
            item_type: "u64".into(),
        })
    );
}

/// Takes `per_item` numbers from its side input for each item of its input,
/// recording them and how far the side input's source ran ahead.
struct SideTaker {
    side: SideInput<u64>,
    per_item: usize,
    sent: Arc<AtomicU64>,
    taken: Arc<Mutex<Vec<u64>>>,
    max_ahead: Arc<AtomicU64>,
}

impl Stage for SideTaker {
    type In = u64;
    type Out = ();
    fn process(&mut self, _tick: u64, out: &mut Emitter<()>) -> anyhow::Result<()> {
        // Let the source run as far ahead as it can.
        std::thread::sleep(Duration::from_millis(5));
        let taken = self.taken.lock().unwrap().len() as u64;
        let ahead = self.sent.load(Ordering::SeqCst).saturating_sub(taken);
        self.max_ahead.fetch_max(ahead, Ordering::SeqCst);
        for _ in 0..self.per_item {
            let number = self.side.next(out).expect("a number for each tick");
            self.taken.lock().unwrap().push(number);
        }
        Ok(())
    }

    fn finish(&mut self, out: &mut Emitter<()>) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.side.next(out).is_none(),
            "the side input goes on after its source finished"
        );
        Ok(())
    }
}

#[test]
fn a_side_input_is_read_at_the_stages_pace_and_bounds_its_source() {
    let instances = Instances::default();
    let sent = Arc::new(AtomicU64::new(0));
    let mut graph = Graph::new();
    add_numbers(&mut graph, 30, &sent, &instances);
    graph
        .add_source("ticks", options(1, 1), |worker| {
            Ok(Counter::new(10, worker))
        })
        .unwrap();
    let side = graph.add_side_queue::<u64>("taker", "numbers", 2).unwrap();
    let taken = Arc::new(Mutex::new(Vec::new()));
    let max_ahead = Arc::new(AtomicU64::new(0));
    let (sent_by_source, taken_here, ahead) = (
        Arc::clone(&sent),
        Arc::clone(&taken),
        Arc::clone(&max_ahead),
    );
    graph
        .add_stage("taker", &["ticks"], options(1, 4), move |_| {
            Ok(SideTaker {
                side: side.clone(),
                per_item: 3,
                sent: Arc::clone(&sent_by_source),
                taken: Arc::clone(&taken_here),
                max_ahead: Arc::clone(&ahead),
            })
        })
        .unwrap();
    run_within(graph, LIMIT).unwrap();
    assert_eq!(*taken.lock().unwrap(), (0..30).collect::<Vec<u64>>());
    // The queue holds 2; the source's next number waits in its send.
    let ahead = max_ahead.load(Ordering::SeqCst);
    assert!(
        (1..=2).contains(&ahead),
        "the source ran {ahead} numbers ahead"
    );

    // A side input is checked as an input is.
    let mut graph = Graph::new();
    add_numbers(&mut graph, 1, &sent, &instances);
    assert!(matches!(
        graph.add_side_queue::<String>("taker", "numbers", 2),
        Err(GraphError::TypeMismatch { .. })
    ));
    assert!(matches!(
        graph.add_side_queue::<u64>("taker", "nowhere", 2),
        Err(GraphError::UnknownInput { .. })
    ));
}
