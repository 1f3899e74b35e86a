//! c10d through clipflow's shim, on real processes: each test starts two
//! copies of this test binary as ranks 0 and 1 of a gloo group on a
//! loopback TCPStore (the `CLIPFLOW_TEST_RANK` variable tells a copy which
//! rank it is and runs only that test), and checks what every rank sees.
//!
//! - all-gather, all-reduce, broadcast and the all-reduce inside autograd
//!   give each rank the values (and gradients) torch's collectives give;
//! - DDP's Reducer leaves every parameter's gradient equal to the per-rank
//!   gradients averaged by hand, over two steps (the first with one bucket,
//!   the second with the buckets rebuilt in the order gradients arrived):
//!   exactly, since averaging two float32 values is exact but for rounding
//!   of one addition, the same addition on both sides;
//! - a rank that exits before a collective makes the other's collective
//!   fail with an error, not hang.

use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use clipflow_core::collective::Collective;
use clipflow_core::distributed::{Backend, GradientReducer, ProcessGroup, Rendezvous};
use tch::{Device, Kind, Tensor};

const RANK_VARIABLE: &str = "CLIPFLOW_TEST_RANK";
const PORT_VARIABLE: &str = "CLIPFLOW_TEST_PORT";

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// In a rank process: this rank's group. In the test process: `None`,
/// after running `test_name` as two rank processes and checking how they
/// ended with `check(rank, status, stderr)`.
fn as_ranks(
    test_name: &str,
    check: impl Fn(usize, std::process::ExitStatus, &str),
) -> Option<ProcessGroup> {
    if let Ok(rank) = std::env::var(RANK_VARIABLE) {
        let port: u16 = std::env::var(PORT_VARIABLE).unwrap().parse().unwrap();
        let group = ProcessGroup::join(&Rendezvous {
            host: "127.0.0.1".into(),
            port,
            store_is_hosted: false,
            rank: rank.parse().unwrap(),
            world_size: 2,
            timeout: Duration::from_secs(60),
            backend: Backend::Gloo,
        })
        .expect("joining the group");
        return Some(group);
    }
    let port = free_port().to_string();
    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = (0..2)
        .map(|rank| {
            Command::new(&exe)
                .args([test_name, "--exact", "--nocapture", "--test-threads", "1"])
                .env(RANK_VARIABLE, rank.to_string())
                .env(PORT_VARIABLE, &port)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for (rank, child) in children.into_iter().enumerate() {
        let out = child.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            stdout.contains("running 1 test"),
            "rank {rank} did not run {test_name}:\n{stdout}"
        );
        check(rank, out.status, &String::from_utf8_lossy(&out.stderr));
    }
    None
}

fn both_succeed(rank: usize, status: std::process::ExitStatus, stderr: &str) {
    assert!(status.success(), "rank {rank} failed:\n{stderr}");
}

#[test]
fn collectives_give_every_rank_the_group_values() {
    let Some(group) = as_ranks("collectives_give_every_rank_the_group_values", both_succeed) else {
        return;
    };
    let rank = group.rank() as f32;
    let mine = Tensor::from_slice(&[rank, 10.0 + rank, -rank]).reshape([3, 1]);
    let gathered = group.all_gather(&mine).unwrap();
    assert_eq!(gathered.len(), 2);
    for (k, slice) in gathered.iter().enumerate() {
        let k = k as f32;
        assert_eq!(
            Vec::<f32>::try_from(slice.flatten(0, -1)).unwrap(),
            [k, 10.0 + k, -k]
        );
    }
    let summed = group.all_reduce_sum(&mine).unwrap();
    assert_eq!(
        Vec::<f32>::try_from(summed.flatten(0, -1)).unwrap(),
        [1.0, 21.0, -1.0]
    );
    // The input is left alone.
    assert_eq!(Vec::<f32>::try_from(mine.flatten(0, -1)).unwrap()[0], rank);
    let chunks = [mine.shallow_clone(), 2 * &mine];
    let scattered = group.reduce_scatter_sum(&chunks).unwrap();
    let want: Vec<f32> = [1.0f32, 21.0, -1.0]
        .iter()
        .map(|v| v * (1.0 + rank))
        .collect();
    assert_eq!(
        Vec::<f32>::try_from(scattered.flatten(0, -1)).unwrap(),
        want
    );
    let shared = [
        Tensor::full([4], 1.0 + rank as f64, (Kind::Float, Device::Cpu)),
        Tensor::full([2, 2], 7 * (1 + rank as i64), (Kind::Int64, Device::Cpu)),
    ];
    group.broadcast(&shared, 0).unwrap();
    assert_eq!(Vec::<f32>::try_from(&shared[0]).unwrap(), [1.0; 4]);
    assert_eq!(
        Vec::<i64>::try_from(shared[1].flatten(0, -1)).unwrap(),
        [7; 4]
    );
    // Inside autograd: rank r's loss weighs the sum by (r + 1), so the
    // gradient each rank's input gets is the sum over ranks, 1 + 2.
    let input = Tensor::from_slice(&[rank, 1.0]).set_requires_grad(true);
    let summed = group.all_reduce_sum_with_grad(&(&input * 2.0)).unwrap();
    assert_eq!(Vec::<f32>::try_from(summed.detach()).unwrap(), [2.0, 4.0]);
    (summed * (1.0 + rank as f64)).sum(Kind::Float).backward();
    assert_eq!(Vec::<f32>::try_from(input.grad()).unwrap(), [6.0, 6.0]);
    group.barrier().unwrap();
}

/// A two-layer model's parameters, the same on both ranks.
fn parameters() -> Vec<Tensor> {
    tch::manual_seed(0);
    let shapes: [&[i64]; 4] = [&[64, 32], &[64], &[8, 64], &[8]];
    shapes
        .iter()
        .map(|shape| Tensor::randn(*shape, (Kind::Float, Device::Cpu)).set_requires_grad(true))
        .collect()
}

fn loss(params: &[Tensor], inputs: &Tensor) -> Tensor {
    let hidden = inputs.linear(&params[0], Some(&params[1])).gelu("none");
    hidden
        .linear(&params[2], Some(&params[3]))
        .square()
        .mean(Kind::Float)
}

fn gradients(params: &[Tensor]) -> Vec<Tensor> {
    params.iter().map(|p| p.grad().copy()).collect()
}

fn zero_grads(params: &[Tensor]) {
    for p in params {
        let mut grad = p.grad();
        if grad.defined() {
            let _ = grad.zero_();
        }
    }
}

#[test]
fn reducer_averages_gradients_over_the_ranks() {
    let Some(group) = as_ranks("reducer_averages_gradients_over_the_ranks", both_succeed) else {
        return;
    };
    let params = parameters();
    let mut reducer = GradientReducer::new(
        &group,
        params.iter().map(Tensor::shallow_clone).collect(),
        false,
    )
    .unwrap();
    for step in 0..2 {
        tch::manual_seed(100 * step + group.rank() as i64);
        let inputs = Tensor::randn([16, 32], (Kind::Float, Device::Cpu));
        // By hand: this rank's own gradients, averaged over the ranks.
        zero_grads(&params);
        loss(&params, &inputs).backward();
        let by_hand: Vec<Tensor> = gradients(&params)
            .iter()
            .map(|g| group.all_reduce_sum(g).unwrap() / 2.0)
            .collect();
        // Through the reducer, as DDP's forward and backward drive it.
        zero_grads(&params);
        reducer.prepare_for_forward().unwrap();
        let value = loss(&params, &inputs);
        reducer.prepare_for_backward().unwrap();
        value.backward();
        for (i, (reduced, want)) in gradients(&params).iter().zip(&by_hand).enumerate() {
            let diff = (reduced - want).abs().max().double_value(&[]);
            assert_eq!(
                diff, 0.0,
                "step {step}, parameter {i}: reduced gradient off by {diff}"
            );
        }
        // Not this rank's own gradient: the other rank's inputs count.
        let own = {
            zero_grads(&params);
            loss(&params, &inputs).backward();
            gradients(&params)
        };
        let moved = (&own[0] - &by_hand[0]).abs().max().double_value(&[]);
        assert!(
            moved > 0.0,
            "the average equals rank {}'s own gradient",
            group.rank()
        );
    }
}

#[test]
fn a_rank_that_leaves_fails_the_other_ranks_collective() {
    let checked = as_ranks(
        "a_rank_that_leaves_fails_the_other_ranks_collective",
        |rank, status, stderr| match rank {
            1 => assert!(status.success(), "rank 1 failed:\n{stderr}"),
            _ => {
                assert!(!status.success(), "rank 0 went on as if nothing happened");
                assert!(stderr.contains("all-reduce of a [1000] tensor"), "{stderr}");
            }
        },
    );
    let Some(group) = checked else {
        return;
    };
    group.barrier().unwrap();
    if group.rank() == 1 {
        std::process::exit(0);
    }
    let started = Instant::now();
    let result = group.all_reduce_sum(&Tensor::ones([1000], (Kind::Float, Device::Cpu)));
    let error = result.expect_err("an all-reduce without the other rank");
    assert!(
        started.elapsed() < Duration::from_secs(50),
        "the failure took {:?}",
        started.elapsed()
    );
    panic!("{error:#}");
}
