//! The live status display: one line per stage on stderr, redrawn a few
//! times a second while a graph runs (only when stderr is a terminal), so the
//! stage that holds the pipeline back is visible as it happens.

use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use super::stats::{StageSnapshot, StageStats};

const REDRAW_EVERY: Duration = Duration::from_millis(250);
const BAR_WIDTH: usize = 20;

pub(crate) struct LiveStatus {
    stop: Sender<()>,
    thread: JoinHandle<()>,
}

impl LiveStatus {
    /// Starts drawing, or returns `None` when stderr is not a terminal.
    pub(crate) fn start(stats: Vec<Arc<StageStats>>) -> Option<Self> {
        if !std::io::stderr().is_terminal() || stats.is_empty() {
            return None;
        }
        let (stop, stopped) = crossbeam_channel::bounded(0);
        let thread = std::thread::Builder::new()
            .name("live-status".into())
            .spawn(move || draw_until_stopped(&stats, &stopped))
            .ok()?;
        Some(LiveStatus { stop, thread })
    }

    /// Draws the last frame and stops.
    pub(crate) fn stop(self) {
        drop(self.stop);
        let _ = self.thread.join();
    }
}

fn draw_until_stopped(stats: &[Arc<StageStats>], stopped: &Receiver<()>) {
    let width = stats.iter().map(|s| s.name().len()).max().unwrap_or(0);
    let mut previous: Vec<StageSnapshot> = stats.iter().map(|s| s.snapshot()).collect();
    let mut previous_time = Instant::now();
    let mut drawn = false;
    loop {
        let last = matches!(
            stopped.recv_timeout(REDRAW_EVERY),
            Err(RecvTimeoutError::Disconnected) | Ok(())
        );
        let now = Instant::now();
        let interval = now - previous_time;
        let current: Vec<StageSnapshot> = stats.iter().map(|s| s.snapshot()).collect();
        let mut frame = String::new();
        if drawn {
            frame.push_str(&format!("\x1b[{}A", current.len()));
        }
        for (now_stats, before) in current.iter().zip(&previous) {
            frame.push_str("\r\x1b[2K");
            frame.push_str(&status_line(now_stats, before, interval, width));
            frame.push('\n');
        }
        let mut stderr = std::io::stderr().lock();
        let _ = stderr.write_all(frame.as_bytes());
        let _ = stderr.flush();
        drawn = true;
        previous = current;
        previous_time = now;
        if last {
            return;
        }
    }
}

/// `#########-----------`: a bar `width` characters wide, filled to
/// `fraction` (clamped to 0..=1).
pub(crate) fn bar(fraction: f64, width: usize) -> String {
    let filled = (fraction.clamp(0.0, 1.0) * width as f64).round() as usize;
    format!("{}{}", "#".repeat(filled), "-".repeat(width - filled))
}

/// `decode  [#########-----------]  45% busy  1234.0/s  in 5678  out 5678  queue 12/64`
fn status_line(
    now: &StageSnapshot,
    before: &StageSnapshot,
    interval: Duration,
    width: usize,
) -> String {
    let seconds = interval.as_secs_f64().max(1e-9);
    let busy = ((now.busy - before.busy).as_secs_f64() / (seconds * now.parallelism as f64))
        .clamp(0.0, 1.0);
    let rate = (now.items_handled() - before.items_handled()) as f64 / seconds;
    let bar = bar(busy, BAR_WIDTH);
    let queue = match (now.queue_len, now.capacity) {
        (Some(len), Some(cap)) => format!("  queue {len}/{cap}"),
        _ => String::new(),
    };
    let errors = if now.errors > 0 {
        format!("  errors {}", now.errors)
    } else {
        String::new()
    };
    format!(
        "{:<width$}  [{bar}] {:>4.0}% busy  {rate:>9.1}/s  in {:>9}  out {:>9}{queue}{errors}",
        now.name,
        busy * 100.0,
        now.items_in,
        now.items_out,
    )
}
