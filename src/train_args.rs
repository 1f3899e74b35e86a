//! `clipflow train` flags: every flag of open_clip_train.main with the same spelling, default and meaning.
