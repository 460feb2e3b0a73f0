//! Progress of a long step. On a terminal, an indicatif bar or spinner on stdout; anywhere
//! else (a pipe, a CI log) indicatif draws nothing, so plain lines are printed instead: the
//! first update at once, then one a second at most, and the last state at the end.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Smallest gap between two plain lines, unless [`Progress::plain_every`] says otherwise.
const PLAIN_EVERY: Duration = Duration::from_secs(1);

pub struct Progress {
    bar: Option<ProgressBar>,
    /// What a plain line says, e.g. "notifications inserted"; the bar's template says it too.
    label: String,
    total: Option<u64>,
    position: u64,
    message: String,
    last_plain: Option<Instant>,
    changed_since_plain: bool,
    plain_every: Duration,
}

impl Progress {
    /// A bar counting up to `total` things called `label`.
    pub fn bar(total: u64, label: &str) -> Progress {
        Progress::new(Some(total), label)
    }

    /// A spinner with a message (set with `message`).
    pub fn spinner(label: &str) -> Progress {
        Progress::new(None, label)
    }

    fn new(total: Option<u64>, label: &str) -> Progress {
        let bar = std::io::stdout().is_terminal().then(|| {
            let (bar, template) = match total {
                Some(n) => (
                    ProgressBar::with_draw_target(Some(n), ProgressDrawTarget::stdout()),
                    format!("      [{{bar:40}}] {{pos}}/{{len}} {label}{{msg}}"),
                ),
                None => (
                    ProgressBar::with_draw_target(None, ProgressDrawTarget::stdout()),
                    format!("      {{spinner}} {label}{{msg}}"),
                ),
            };
            bar.set_style(
                ProgressStyle::with_template(&template)
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
            );
            if total.is_none() {
                bar.enable_steady_tick(Duration::from_millis(100));
            }
            bar
        });
        Progress {
            bar,
            label: label.to_string(),
            total,
            position: 0,
            message: String::new(),
            last_plain: None,
            changed_since_plain: false,
            plain_every: PLAIN_EVERY,
        }
    }

    /// Print plain lines at most this often (a long run would flood a log at one a second).
    pub fn plain_every(mut self, every: Duration) -> Progress {
        self.plain_every = every;
        self
    }

    pub fn set_length(&mut self, total: u64) {
        self.total = Some(total);
        if let Some(bar) = &self.bar {
            bar.set_length(total);
        }
    }

    pub fn set_position(&mut self, position: u64) {
        self.changed_since_plain |= position != self.position;
        self.position = position;
        if let Some(bar) = &self.bar {
            bar.set_position(position);
        }
        self.plain(false);
    }

    /// Text after the count, e.g. "(200/s)"; empty for none (no empty parentheses).
    pub fn message(&mut self, message: impl Into<String>) {
        let message = message.into();
        let message = if message.is_empty() {
            message
        } else {
            format!(" {message}")
        };
        self.changed_since_plain |= message != self.message;
        self.message = message.clone();
        if let Some(bar) = &self.bar {
            bar.set_message(message);
        }
        self.plain(false);
    }

    /// Clear the bar, or print the last state as a plain line.
    pub fn finish(mut self) {
        match self.bar.take() {
            Some(bar) => bar.finish_and_clear(),
            None => self.plain(true),
        }
    }

    fn plain(&mut self, last: bool) {
        if self.bar.is_some() {
            return;
        }
        let due = self
            .last_plain
            .is_none_or(|at| at.elapsed() >= self.plain_every);
        if !(due || last && self.changed_since_plain) {
            return;
        }
        let count = match self.total {
            Some(total) => format!("{}/{total} ", self.position),
            None => String::new(),
        };
        println!("      {count}{}{}", self.label, self.message);
        self.last_plain = Some(Instant::now());
        self.changed_since_plain = false;
    }
}

/// `195.0323` per second, as a person reads it: `195/s`.
pub fn rate(per_second: f64) -> String {
    if per_second >= 10.0 {
        format!("{per_second:.0}/s")
    } else {
        format!("{per_second:.1}/s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_rounded() {
        assert_eq!(rate(195.0323), "195/s");
        assert_eq!(rate(2.345), "2.3/s");
    }
}
