//! A progress bar with an ETA for the training loop, drawn in place on
//! stderr when stderr is a terminal (the same way the runtime's live stage
//! lines are drawn): `epoch 2 [#######-------------]  35%  350/1000  4.21 it/s  ETA 0:02:34`.
//! The text log clears it before writing a record and redraws it after
//! (see [`super::RunLog::attach_progress`]), so the two never mix.

use std::io::{IsTerminal, Write};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::runtime::live::bar;

const BAR_WIDTH: usize = 20;
const REDRAW_EVERY: Duration = Duration::from_millis(200);

/// A handle on the progress line; clones draw the same line.
#[derive(Clone)]
pub struct ProgressLine {
    state: Arc<Mutex<ProgressState>>,
}

struct ProgressState {
    label: String,
    total: u64,
    done: u64,
    started: Instant,
    last_drawn: Option<Instant>,
    finished: bool,
}

impl ProgressLine {
    /// Starts a line for `total` steps, or returns `None` when stderr is
    /// not a terminal (logs and pipes get no control characters).
    pub fn start(label: &str, total: u64) -> Option<Self> {
        if !std::io::stderr().is_terminal() {
            return None;
        }
        let line = ProgressLine {
            state: Arc::new(Mutex::new(ProgressState {
                label: label.to_string(),
                total,
                done: 0,
                started: Instant::now(),
                last_drawn: None,
                finished: false,
            })),
        };
        line.draw(&mut line.lock(), true);
        Some(line)
    }

    /// Records `done` steps; redraws at most a few times a second, and always
    /// at the last step.
    pub fn set(&self, done: u64) {
        let mut state = self.lock();
        state.done = done;
        let due = state
            .last_drawn
            .is_none_or(|drawn| drawn.elapsed() >= REDRAW_EVERY);
        if due || done >= state.total {
            self.draw(&mut state, false);
        }
    }

    /// Draws the final state and moves to the next line; later calls do
    /// nothing.
    pub fn finish(&self) {
        let mut state = self.lock();
        if !state.finished {
            self.draw(&mut state, false);
            state.finished = true;
            eprintln!();
        }
    }

    /// Runs `write` (which prints whole lines to the terminal) with the
    /// progress line erased, then redraws it below what was written.
    pub fn around<T>(&self, write: impl FnOnce() -> T) -> T {
        let mut state = self.lock();
        if state.finished {
            return write();
        }
        eprint!("\r\x1b[2K");
        let result = write();
        self.draw(&mut state, true);
        result
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ProgressState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn draw(&self, state: &mut ProgressState, force: bool) {
        if state.finished && !force {
            return;
        }
        let text = progress_text(
            &state.label,
            state.done,
            state.total,
            state.started.elapsed(),
        );
        let mut stderr = std::io::stderr().lock();
        let _ = write!(stderr, "\r\x1b[2K{text}");
        let _ = stderr.flush();
        state.last_drawn = Some(Instant::now());
    }
}

/// The text of the line: label, bar, percentage, counts, rate and the time
/// left at the mean rate so far (`--:--:--` before the first step).
fn progress_text(label: &str, done: u64, total: u64, elapsed: Duration) -> String {
    let fraction = if total == 0 {
        1.0
    } else {
        done as f64 / total as f64
    };
    let seconds = elapsed.as_secs_f64();
    let rate = if seconds > 0.0 {
        done as f64 / seconds
    } else {
        0.0
    };
    let eta = if rate > 0.0 {
        clock(total.saturating_sub(done) as f64 / rate)
    } else {
        "--:--:--".to_string()
    };
    format!(
        "{label} [{}] {:>4.0}%  {done}/{total}  {rate:.2} it/s  ETA {eta}",
        bar(fraction, BAR_WIDTH),
        fraction * 100.0
    )
}

/// `H:MM:SS`.
fn clock(seconds: f64) -> String {
    let seconds = seconds.round() as u64;
    format!(
        "{}:{:02}:{:02}",
        seconds / 3600,
        seconds / 60 % 60,
        seconds % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eta_is_the_remaining_steps_at_the_mean_rate() {
        let text = progress_text("epoch 0", 25, 100, Duration::from_secs(50));
        assert!(
            text.starts_with("epoch 0 [#####---------------]   25%  25/100"),
            "{text}"
        );
        assert!(text.ends_with("0.50 it/s  ETA 0:02:30"), "{text}");
    }

    #[test]
    fn eta_is_unknown_before_the_first_step() {
        let text = progress_text("epoch 0", 0, 100, Duration::ZERO);
        assert!(text.ends_with("ETA --:--:--"), "{text}");
    }
}
