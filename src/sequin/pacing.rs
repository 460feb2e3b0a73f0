//! Pacing of writes to Sequin's Management API, so a bulk onboarding or a mass update does
//! not flood a small Sequin.
//!
//! Every write (POST, PUT, PATCH, DELETE) waits for a token of one bucket (a GCRA: `rate`
//! per second, bursts of up to `burst`). Writes that make Sequin restart something (see
//! [`CallKind::Restarting`]) also wait until `restart_spacing` has passed since the previous
//! one. Reads never wait. Times are `tokio::time` instants, so tests run on tokio's paused
//! clock.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

pub use crate::config::{WriteRate, DEFAULT_RESTART_SPACING};

/// What a call costs Sequin, as far as pacing goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallKind {
    /// GET: never paced.
    Read,
    /// A write that only changes rows and refreshes routing (create, delete).
    Write,
    /// A write after which Sequin restarts work (Sequin v0.14.6,
    /// `lib/sequin/runtime/consumer_lifecycle_event_worker.ex`): a sink update to any
    /// status but `disabled` restarts replication of the whole slot; an endpoint update
    /// restarts every sink using it; a function update restarts replication of every slot
    /// using it (`config/apply` cannot be told apart from a create, so it counts).
    Restarting,
}

impl CallKind {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            CallKind::Read => "read",
            CallKind::Write => "write",
            CallKind::Restarting => "restarting",
        }
    }
}

/// One write budget, shared by every clone.
#[derive(Clone, Debug)]
pub struct Pacer(Option<Arc<Limits>>);

#[derive(Debug)]
struct Limits {
    /// Time per write at the sustained rate.
    interval: Duration,
    /// How far ahead of the sustained rate a burst may run: `(burst - 1) * interval`.
    tolerance: Duration,
    /// The GCRA's theoretical arrival time of the next write.
    next: Mutex<Option<Instant>>,
    restart_spacing: Duration,
    /// When the next restarting write may go. Held while that write waits for its token,
    /// so restarting writes go one at a time, spaced by start time.
    next_restart: tokio::sync::Mutex<Option<Instant>>,
}

impl Default for Pacer {
    fn default() -> Self {
        Pacer::new(WriteRate::DEFAULT, DEFAULT_RESTART_SPACING)
    }
}

impl Pacer {
    /// `rate` writes per second with bursts of one second's worth (at least one write).
    /// `Unlimited` turns all pacing off, restart spacing included.
    pub fn new(rate: WriteRate, restart_spacing: Duration) -> Self {
        match rate {
            WriteRate::Unlimited => Pacer(None),
            WriteRate::PerSecond(rate) => {
                let burst = rate.ceil().max(1.0);
                let interval = Duration::from_secs_f64(1.0 / rate);
                Pacer(Some(Arc::new(Limits {
                    interval,
                    tolerance: interval.mul_f64(burst - 1.0),
                    next: Mutex::new(None),
                    restart_spacing,
                    next_restart: tokio::sync::Mutex::new(None),
                })))
            }
        }
    }

    pub fn unlimited() -> Self {
        Pacer(None)
    }

    /// The burst size, or `None` when unlimited.
    pub fn burst(&self) -> Option<u32> {
        self.0.as_ref().map(|l| {
            let extra = l.tolerance.as_secs_f64() / l.interval.as_secs_f64();
            extra.round() as u32 + 1
        })
    }

    /// Wait until a call of `kind` may be sent; returns how long it waited.
    pub async fn wait(&self, kind: CallKind) -> Duration {
        let Some(limits) = &self.0 else {
            return Duration::ZERO;
        };
        let started = Instant::now();
        match kind {
            CallKind::Read => return Duration::ZERO,
            CallKind::Write => limits.token().await,
            CallKind::Restarting => {
                let mut next_restart = limits.next_restart.lock().await;
                if let Some(at) = *next_restart {
                    tokio::time::sleep_until(at).await;
                }
                limits.token().await;
                *next_restart = Some(Instant::now() + limits.restart_spacing);
            }
        }
        started.elapsed()
    }
}

impl Limits {
    /// Reserve the next slot of the bucket and sleep until it. Reservations are made at
    /// "now", in lock order, so the slots keep the bucket's guarantee: at most
    /// `burst + rate * t` writes in any span of `t` seconds.
    async fn token(&self) {
        let at = {
            let mut next = self.next.lock().expect("pacer mutex poisoned");
            let now = Instant::now();
            let theoretical = next.map_or(now, |n| n.max(now));
            *next = Some(theoretical + self.interval);
            theoretical
                .checked_sub(self.tolerance)
                .map_or(now, |t| t.max(now))
        };
        tokio::time::sleep_until(at).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pacer(rate: f64, spacing: Duration) -> Pacer {
        Pacer::new(WriteRate::PerSecond(rate), spacing)
    }

    #[test]
    fn rates_parse_numbers_and_unlimited_and_refuse_the_rest() {
        assert_eq!("20".parse(), Ok(WriteRate::PerSecond(20.0)));
        assert_eq!("0.5".parse(), Ok(WriteRate::PerSecond(0.5)));
        assert_eq!("Unlimited".parse(), Ok(WriteRate::Unlimited));
        for bad in ["0", "-3", "fast", "", "NaN", "inf", "1e9"] {
            let err = bad.parse::<WriteRate>().unwrap_err();
            assert!(err.contains("unlimited"), "{bad}: {err}");
        }
    }

    #[test]
    fn the_burst_is_one_seconds_worth() {
        assert_eq!(pacer(20.0, Duration::ZERO).burst(), Some(20));
        assert_eq!(pacer(0.5, Duration::ZERO).burst(), Some(1));
        assert_eq!(Pacer::unlimited().burst(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn n_writes_take_at_least_n_minus_burst_over_rate() {
        let pacer = pacer(10.0, Duration::ZERO);
        let start = Instant::now();
        let mut times = Vec::new();
        for _ in 0..35 {
            pacer.wait(CallKind::Write).await;
            times.push(start.elapsed());
        }
        // The first 10 (the burst) go at once, then one every 100 ms.
        assert!(times[..10].iter().all(|t| t.is_zero()), "{times:?}");
        assert_eq!(times[10], Duration::from_millis(100));
        assert_eq!(times[34], Duration::from_millis(2500));
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_pacer_refills_its_burst() {
        let pacer = pacer(5.0, Duration::ZERO);
        for _ in 0..5 {
            pacer.wait(CallKind::Write).await;
        }
        tokio::time::sleep(Duration::from_secs(10)).await;
        let start = Instant::now();
        for _ in 0..5 {
            pacer.wait(CallKind::Write).await;
        }
        assert_eq!(start.elapsed(), Duration::ZERO);
        pacer.wait(CallKind::Write).await;
        assert_eq!(start.elapsed(), Duration::from_millis(200));
    }

    #[tokio::test(start_paused = true)]
    async fn reads_never_wait() {
        let pacer = pacer(1.0, Duration::from_secs(60));
        pacer.wait(CallKind::Write).await;
        pacer.wait(CallKind::Restarting).await;
        let start = Instant::now();
        for _ in 0..1000 {
            assert_eq!(pacer.wait(CallKind::Read).await, Duration::ZERO);
        }
        assert_eq!(start.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn unlimited_never_waits() {
        let pacer = Pacer::unlimited();
        let start = Instant::now();
        for _ in 0..1000 {
            pacer.wait(CallKind::Write).await;
            pacer.wait(CallKind::Restarting).await;
        }
        assert_eq!(start.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn restarting_writes_are_spaced_and_do_not_hold_up_plain_writes() {
        let pacer = pacer(100.0, Duration::from_secs(5));
        let start = Instant::now();
        let restarts: Vec<_> = (0..4)
            .map(|_| {
                let pacer = pacer.clone();
                tokio::spawn(async move {
                    let waited = pacer.wait(CallKind::Restarting).await;
                    (start.elapsed(), waited)
                })
            })
            .collect();
        // Plain writes meanwhile go at the bucket's pace, not behind the restarts.
        tokio::task::yield_now().await;
        let plain = Instant::now();
        for _ in 0..50 {
            pacer.wait(CallKind::Write).await;
        }
        assert!(
            plain.elapsed() < Duration::from_secs(1),
            "{:?}",
            plain.elapsed()
        );
        let mut times = Vec::new();
        for r in restarts {
            times.push(r.await.unwrap().0);
        }
        times.sort();
        for pair in times.windows(2) {
            assert!(pair[1] - pair[0] >= Duration::from_secs(5), "{times:?}");
        }
        assert!(times[3] >= Duration::from_secs(15), "{times:?}");
        assert!(times[3] < Duration::from_secs(16), "{times:?}");
    }

    /// 10,000 users onboarding (an endpoint and a sink each) through 16 concurrent tasks,
    /// with 50 ms per Sequin call: the writes follow the bucket exactly.
    #[tokio::test(start_paused = true)]
    async fn a_ten_thousand_user_onboarding_keeps_to_the_rate() {
        const USERS: usize = 10_000;
        const RATE: f64 = 20.0;
        let pacer = pacer(RATE, Duration::from_secs(5));
        let burst = pacer.burst().unwrap() as usize;
        let start = Instant::now();
        let next_user = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let grants = Arc::new(Mutex::new(Vec::with_capacity(2 * USERS)));
        let tasks: Vec<_> = (0..16)
            .map(|_| {
                let (pacer, next_user, grants) = (pacer.clone(), next_user.clone(), grants.clone());
                tokio::spawn(async move {
                    while next_user.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < USERS {
                        for _ in 0..2 {
                            pacer.wait(CallKind::Write).await;
                            grants.lock().unwrap().push(start.elapsed());
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        let mut grants = std::mem::take(&mut *grants.lock().unwrap());
        grants.sort();
        assert_eq!(grants.len(), 2 * USERS);
        // Total: (N - burst) / rate, to the millisecond.
        let expected = Duration::from_secs_f64((2 * USERS - burst) as f64 / RATE);
        let last = *grants.last().unwrap();
        assert!(last >= expected, "{last:?} < {expected:?}");
        assert!(last < expected + Duration::from_millis(1), "{last:?}");
        // The envelope: the k-th write (1-based) never before (k - burst) / rate.
        for (k, t) in grants.iter().enumerate() {
            let earliest = (k + 1).saturating_sub(burst) as f64 / RATE;
            assert!(t.as_secs_f64() + 1e-9 >= earliest, "write {k} at {t:?}");
        }
        // No one-second window holds more than rate + burst writes, and once the first
        // burst is spent, none holds more than the rate.
        let mut first = 0;
        for (last, t) in grants.iter().enumerate() {
            while grants[first] + Duration::from_secs(1) <= *t {
                first += 1;
            }
            let in_window = last - first + 1;
            assert!(in_window <= RATE as usize + burst, "{in_window} at {t:?}");
            if grants[first] >= Duration::from_secs(2) {
                assert!(in_window <= RATE as usize, "{in_window} at {t:?}");
            }
        }
    }
}
