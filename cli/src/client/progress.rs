//! What the user sees while an export runs, on stderr. On a terminal (unless `--no-progress`)
//! one live line is redrawn: the server's `X-Progress` while polling, files and bytes while
//! downloading. Otherwise plain lines: a poll line when `X-Progress` changes, a line per file.
//! Messages (status URL, retries) are always lines of their own. Nothing here may show file
//! content.

use std::fmt;
use std::io::IsTerminal;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::DownloadedFile;

/// Least time between two redraws of the live line.
const REDRAW: Duration = Duration::from_millis(150);
const SPINNER: [char; 4] = ['|', '/', '-', '\\'];

pub(crate) struct Progress {
    live: bool,
    bytes: AtomicU64,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    last_progress: Option<String>,
    last_draw: Option<Instant>,
    line_open: bool,
    spin: usize,
    files_total: usize,
    files_done: usize,
    download_started: Option<Instant>,
}

pub(crate) fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

impl Progress {
    pub fn new(no_progress: bool) -> Progress {
        Progress {
            live: !no_progress && std::io::stderr().is_terminal(),
            bytes: AtomicU64::new(0),
            state: Mutex::new(State::default()),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic elsewhere while drawing leaves nothing inconsistent worth refusing over.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A line of its own.
    pub fn message(&self, text: fmt::Arguments<'_>) {
        let mut s = self.state();
        if s.line_open {
            eprint!("\r\x1b[2K");
            s.line_open = false;
            s.last_draw = None;
        }
        eprintln!("{text}");
    }

    /// A `202` answer, with its `X-Progress` if any.
    pub fn polling(&self, x_progress: Option<&str>, elapsed: Duration) {
        // The text is the server's: keep it short and on one line.
        let text: String = x_progress
            .unwrap_or("in progress")
            .chars()
            .filter(|c| !c.is_control())
            .take(100)
            .collect();
        let mut s = self.state();
        if self.live {
            s.spin = (s.spin + 1) % SPINNER.len();
            eprint!(
                "\r\x1b[2K{} export: {text} ({} s)",
                SPINNER[s.spin],
                elapsed.as_secs()
            );
            s.line_open = true;
        } else if s.last_progress.as_deref() != Some(text.as_str()) {
            eprintln!("export: {text} ({} s)", elapsed.as_secs());
        }
        s.last_progress = Some(text);
    }

    pub fn start_downloads(&self, files: usize) {
        let mut s = self.state();
        s.files_total = files;
        s.files_done = 0;
        s.download_started = Some(Instant::now());
        drop(s);
        self.message(format_args!("downloading {files} file(s)"));
    }

    /// Bytes received (negative when a failed attempt's bytes are taken back).
    pub fn add_bytes(&self, n: i64) {
        if n >= 0 {
            self.bytes.fetch_add(n.unsigned_abs(), Ordering::Relaxed);
        } else {
            self.bytes.fetch_sub(n.unsigned_abs(), Ordering::Relaxed);
        }
        if self.live {
            let mut s = self.state();
            if s.last_draw.is_none_or(|t| t.elapsed() >= REDRAW) {
                self.draw(&mut s);
            }
        }
    }

    fn draw(&self, s: &mut State) {
        let bytes = self.bytes.load(Ordering::Relaxed);
        let rate = s
            .download_started
            .map(|t| t.elapsed().as_secs_f64())
            .filter(|secs| *secs > 0.5)
            .map(|secs| format!(", {}/s", human_bytes((bytes as f64 / secs) as u64)))
            .unwrap_or_default();
        eprint!(
            "\r\x1b[2Kdownloaded {}/{} files, {}{rate}",
            s.files_done,
            s.files_total,
            human_bytes(bytes)
        );
        s.line_open = true;
        s.last_draw = Some(Instant::now());
    }

    pub fn file_done(&self, f: &DownloadedFile) {
        let mut s = self.state();
        s.files_done += 1;
        if self.live {
            self.draw(&mut s);
        } else {
            eprintln!(
                "  [{}/{}] {} {}: {} lines, {}",
                s.files_done,
                s.files_total,
                f.section,
                f.path.display(),
                f.lines,
                human_bytes(f.bytes)
            );
        }
    }

    /// Ends the live line, if one is drawn.
    pub fn finish(&self) {
        let mut s = self.state();
        if s.line_open {
            eprintln!();
            s.line_open = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_sizes() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(5 * 1024 * 1024), "5.0 MiB");
    }
}
