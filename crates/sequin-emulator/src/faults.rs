//! Fault injection knobs of the emulator.
//!
//! Faults are applied to every `/api` request before authentication, in this order:
//! `force_401`, `hang`, `latency_ms`, `fail_next`, `rate_limit_retry_after`, `error_rate`;
//! after the operation ran, `fail_after_next` may replace the real answer.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// All faults, settable at start (`EmulatorConfig::faults`) and at run time
/// (`EmulatorHandle::set_faults`, `PUT /_emulator/faults`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Faults {
    /// Every API call gets the 401 "invalid or has expired" body.
    #[serde(default)]
    pub force_401: bool,
    /// Applies to every operation that has no entry in `routes`.
    #[serde(default)]
    pub all: RouteFaults,
    /// Per operation name (`create_sink`, ...); an entry replaces `all` for that operation.
    #[serde(default)]
    pub routes: BTreeMap<String, RouteFaults>,
}

/// Faults for one operation (or for all of them).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RouteFaults {
    /// Probability (0..1) of answering 503 `{"summary":"Service unavailable (injected)"}`
    /// before doing anything.
    #[serde(default)]
    pub error_rate: f64,
    /// Delay added before answering.
    #[serde(default)]
    pub latency_ms: u64,
    /// Never answer (sleeps for an hour, or until the emulator shuts down).
    #[serde(default)]
    pub hang: bool,
    /// When set: answer 429 with `Retry-After: N` and `{"summary":"Too many requests (injected)"}`.
    #[serde(default)]
    pub rate_limit_retry_after: Option<u64>,
    /// One-shot responses, consumed in order, answered before any processing.
    #[serde(default)]
    pub fail_next: Vec<InjectedResponse>,
    /// One-shot responses: the operation is performed (state changes), then this is answered
    /// instead of the real response (a lost response).
    #[serde(default)]
    pub fail_after_next: Vec<InjectedResponse>,
}

/// A canned response.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct InjectedResponse {
    pub status: u16,
    #[serde(default)]
    pub body: serde_json::Value,
}

impl Faults {
    /// The faults that apply to `operation`: its own entry, or `all`.
    pub fn for_operation(&self, operation: &str) -> &RouteFaults {
        self.routes.get(operation).unwrap_or(&self.all)
    }

    /// Mutable access to the faults that apply to `operation`.
    pub fn for_operation_mut(&mut self, operation: &str) -> &mut RouteFaults {
        match self.routes.get_mut(operation) {
            Some(r) => r,
            None => &mut self.all,
        }
    }
}
