//! What a training run reports, in OpenCLIP's formats: the text log
//! (out.log and the terminal), params.txt, the per-step and evaluation log
//! lines, TensorBoard event files, wandb through a Python sidecar, and a
//! progress line with an ETA on a terminal. The logger actor drives these;
//! each writer is usable on its own.

pub mod lines;
pub mod params;
pub mod progress;
pub mod py_format;
pub mod run_log;
pub mod tensorboard;
pub mod wandb;

pub use lines::{
    eval_scalars, format_eval_line, format_eval_progress_line, format_generative_loss_line,
    format_train_step_line, LossReading, Meter, TrainStepReport,
};
pub use params::{params_lines, write_params_txt};
pub use progress::ProgressLine;
pub use py_format::PyValue;
pub use run_log::{Level, RunLog};
pub use tensorboard::TensorboardWriter;
pub use wandb::{WandbInit, WandbSidecar};

/// This machine's host name, as Python's `socket.gethostname()` gives it.
pub(crate) fn hostname() -> String {
    let mut buffer = [0u8; 256];
    // SAFETY: the buffer is valid for its whole length, and gethostname
    // writes at most that many bytes.
    let status = unsafe { libc::gethostname(buffer.as_mut_ptr().cast(), buffer.len()) };
    if status != 0 {
        return "localhost".to_string();
    }
    let end = buffer.iter().position(|&b| b == 0).unwrap_or(buffer.len());
    String::from_utf8_lossy(&buffer[..end]).into_owned()
}
