//! What the worker knows about its own health, kept as explicit state: whether the LISTEN
//! connection is up, whether Sequin accepts the API token, whether the database answered.
//! The worker loop, the listener and `/readyz` read it. The Prometheus gauges
//! `userhooks_listener_connected` and `userhooks_sequin_auth_ok` mirror it: they are set from
//! here and never read back to decide anything.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use prometheus::IntGauge;

pub struct Health {
    listener_connected: AtomicBool,
    sequin_auth_ok: AtomicBool,
    database_ok: AtomicBool,
    listener_gauge: IntGauge,
    sequin_auth_gauge: IntGauge,
}

impl Health {
    /// At start: no LISTEN connection yet, the token and the database presumed fine (the
    /// start-up checks correct that). The gauges are set to match.
    pub fn new(listener_gauge: IntGauge, sequin_auth_gauge: IntGauge) -> Arc<Self> {
        listener_gauge.set(0);
        sequin_auth_gauge.set(1);
        Arc::new(Health {
            listener_connected: AtomicBool::new(false),
            sequin_auth_ok: AtomicBool::new(true),
            database_ok: AtomicBool::new(true),
            listener_gauge,
            sequin_auth_gauge,
        })
    }

    pub fn listener_connected(&self) -> bool {
        self.listener_connected.load(Ordering::Relaxed)
    }

    /// Returns whether it was connected before.
    pub fn set_listener_connected(&self, connected: bool) -> bool {
        let was = self.listener_connected.swap(connected, Ordering::Relaxed);
        self.listener_gauge.set(i64::from(connected));
        was
    }

    pub fn sequin_auth_ok(&self) -> bool {
        self.sequin_auth_ok.load(Ordering::Relaxed)
    }

    /// Returns whether the token was accepted before.
    pub fn set_sequin_auth_ok(&self, ok: bool) -> bool {
        let was = self.sequin_auth_ok.swap(ok, Ordering::Relaxed);
        self.sequin_auth_gauge.set(i64::from(ok));
        was
    }

    pub fn database_ok(&self) -> bool {
        self.database_ok.load(Ordering::Relaxed)
    }

    pub fn set_database_ok(&self, ok: bool) {
        self.database_ok.store(ok, Ordering::Relaxed);
    }

    /// Readiness checks: name → ok.
    pub fn readiness(&self) -> Vec<(&'static str, bool)> {
        vec![
            ("database", self.database_ok()),
            ("listener", self.listener_connected()),
            ("sequin_auth", self.sequin_auth_ok()),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gauges_follow_the_state() {
        let listener = IntGauge::new("l", "l").unwrap();
        let auth = IntGauge::new("a", "a").unwrap();
        let health = Health::new(listener.clone(), auth.clone());
        assert_eq!((listener.get(), auth.get()), (0, 1));
        assert!(!health.set_listener_connected(true));
        assert!(health.set_sequin_auth_ok(false));
        assert_eq!((listener.get(), auth.get()), (1, 0));
        // The state is what decides, whatever a gauge says.
        auth.set(1);
        assert!(!health.sequin_auth_ok());
        health.set_database_ok(false);
        assert_eq!(
            health.readiness(),
            [
                ("database", false),
                ("listener", true),
                ("sequin_auth", false)
            ]
        );
    }
}
