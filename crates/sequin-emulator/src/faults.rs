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
    /// Parse faults JSON, refusing values that cannot be meant (a rate outside 0..=1, a
    /// negative delay) with the field's path, e.g. `routes.create_sink.latency_ms`.
    pub fn parse(json: &[u8]) -> Result<Faults, String> {
        let value: serde_json::Value = serde_json::from_slice(json).map_err(|e| e.to_string())?;
        let mut scopes: Vec<(String, &serde_json::Value)> =
            vec![("all".to_string(), &value["all"])];
        if let Some(routes) = value.get("routes").and_then(serde_json::Value::as_object) {
            for (name, route) in routes {
                scopes.push((format!("routes.{name}"), route));
            }
        }
        for (path, scope) in scopes {
            if let Some(rate) = scope.get("error_rate").filter(|v| !v.is_null()) {
                if !rate.as_f64().is_some_and(|r| (0.0..=1.0).contains(&r)) {
                    return Err(format!(
                        "{path}.error_rate must be a probability between 0 and 1 (got {rate})"
                    ));
                }
            }
            for field in ["latency_ms", "rate_limit_retry_after"] {
                if let Some(n) = scope.get(field).filter(|v| !v.is_null()) {
                    if n.as_u64().is_none() {
                        return Err(format!(
                            "{path}.{field} must be a whole number, 0 or more (got {n})"
                        ));
                    }
                }
            }
        }
        serde_json::from_value(value).map_err(|e| e.to_string())
    }

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_takes_what_can_be_meant_and_names_the_field_that_cannot() {
        let ok = Faults::parse(br#"{"all": {"error_rate": 1, "latency_ms": 0}}"#).unwrap();
        assert_eq!(ok.all.error_rate, 1.0);
        let err = Faults::parse(br#"{"all": {"error_rate": 1.5}}"#).unwrap_err();
        assert!(
            err.contains("all.error_rate must be a probability between 0 and 1"),
            "{err}"
        );
        let err = Faults::parse(br#"{"all": {"error_rate": -0.1}}"#).unwrap_err();
        assert!(err.contains("all.error_rate"), "{err}");
        let err = Faults::parse(br#"{"routes": {"create_sink": {"latency_ms": -5}}}"#).unwrap_err();
        assert!(
            err.contains("routes.create_sink.latency_ms must be a whole number, 0 or more"),
            "{err}"
        );
        let err = Faults::parse(br#"{"all": {"rate_limit_retry_after": 1.5}}"#).unwrap_err();
        assert!(err.contains("all.rate_limit_retry_after"), "{err}");
        assert!(Faults::parse(b"not json").is_err());
    }
}
