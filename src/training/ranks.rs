//! What the ranks of a multi-process run settle among themselves at
//! start-up: that they were launched to train the same thing (the flags
//! that decide the maths and the data), and the answers only rank 0 can
//! give (which checkpoint `--resume latest` means).

use anyhow::{bail, Result};
use clipflow_core::collective::Collective;
use clipflow_core::distributed::ProcessGroup;
use tch::Tensor;

use crate::train_args::TrainArgs;

/// Every rank's `bytes`, in rank order.
fn all_gather_bytes(group: &ProcessGroup, bytes: &[u8]) -> Result<Vec<Vec<u8>>> {
    let lengths = group.all_gather(&Tensor::from_slice(&[bytes.len() as i64]))?;
    let lengths: Vec<usize> = lengths
        .iter()
        .map(|t| t.int64_value(&[0]) as usize)
        .collect();
    let longest = lengths.iter().copied().max().unwrap_or(0);
    let mut padded = bytes.to_vec();
    padded.resize(longest, 0);
    let gathered = group.all_gather(&Tensor::from_slice(&padded))?;
    Ok(gathered
        .iter()
        .zip(lengths)
        .map(|(t, length)| {
            let all = Vec::<u8>::try_from(t.flatten(0, -1)).unwrap_or_default();
            all[..length.min(all.len())].to_vec()
        })
        .collect())
}

/// Rank 0's `text` on every rank.
pub fn broadcast_text(group: &ProcessGroup, text: Option<String>) -> Result<Option<String>> {
    let encoded = serde_json::to_vec(&text)?;
    let gathered = all_gather_bytes(group, &encoded)?;
    Ok(serde_json::from_slice(&gathered[0])?)
}

/// The flags whose values must be the same on every rank, as written.
fn training_identity(args: &TrainArgs) -> Vec<(&'static str, String)> {
    let text = |value: &dyn std::fmt::Debug| format!("{value:?}");
    vec![
        ("--model", args.model.clone()),
        ("--pretrained", args.pretrained.clone()),
        ("--train-data", text(&args.train_data)),
        ("--train-num-samples", text(&args.train_num_samples)),
        ("--dataset-type", args.dataset_type.as_str().to_string()),
        ("--dataset-resampled", text(&args.dataset_resampled)),
        ("--batch-size", args.batch_size.to_string()),
        ("--accum-freq", args.accum_freq.to_string()),
        ("--epochs", args.epochs.to_string()),
        ("--precision", args.precision.as_str().to_string()),
        ("--seed", args.seed.to_string()),
        ("--lr", text(&args.lr)),
        ("--wd", args.wd.to_string()),
        ("--warmup", args.warmup.to_string()),
        ("--opt", args.opt.clone()),
        ("--siglip", text(&args.siglip)),
        ("--local-loss", text(&args.local_loss)),
        ("--gather-with-grad", text(&args.gather_with_grad)),
        ("--grad-clip-norm", text(&args.grad_clip_norm)),
        ("--lock-image", text(&args.lock_image)),
        ("--lock-text", text(&args.lock_text)),
        ("--resume", text(&args.resume)),
        ("--ddp-static-graph", text(&args.ddp_static_graph)),
    ]
}

/// Stops every rank, naming the flag and the ranks, when the ranks were
/// launched with different values of a flag that decides what is trained.
pub fn check_ranks_agree(group: &ProcessGroup, args: &TrainArgs) -> Result<()> {
    let mine = training_identity(args);
    let values: Vec<&String> = mine.iter().map(|(_, value)| value).collect();
    let gathered = all_gather_bytes(group, &serde_json::to_vec(&values)?)?;
    let per_rank: Vec<Vec<String>> = gathered
        .iter()
        .map(|bytes| serde_json::from_slice(bytes).unwrap_or_default())
        .collect();
    for (index, (flag, _)) in mine.iter().enumerate() {
        let value_of = |rank: usize| per_rank[rank].get(index).cloned().unwrap_or_default();
        let reference = value_of(0);
        let differing: Vec<String> = (1..per_rank.len())
            .filter(|&rank| value_of(rank) != reference)
            .map(|rank| format!("rank {rank} has {}", value_of(rank)))
            .collect();
        if !differing.is_empty() {
            bail!(
                "the ranks were launched to train different things: {flag} is {reference} on \
                 rank 0 but {}; launch every rank with the same flags",
                differing.join(", ")
            );
        }
    }
    Ok(())
}
