//! `clipflow train`: the drop-in for `python -m open_clip_train.main` (see
//! `crate::training`).

use anyhow::Result;

use crate::train_args::TrainArgs;

pub fn run(args: TrainArgs) -> Result<()> {
    crate::training::run(args)
}
