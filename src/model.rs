//! The domain: what an application asks for (a [`Request`] and its [`Action`]), what an
//! attempt decided (an [`Outcome`]), and the [`Change`]s to subscriptions that go with it.
//! Persistence lives elsewhere: [`crate::queue`] claims requests and writes outcomes back,
//! [`crate::subscriptions`] applies the changes in the same transaction; [`crate::provision`]
//! turns a request into an outcome.

use std::time::Duration;

use serde_json::Value;

/// What a request asks for (the `action` column).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Subscribe,
    Unsubscribe,
    Backfill,
    Update,
    Pause,
    Resume,
}

impl Action {
    /// Every action this worker knows, in the order of the schema's CHECK constraint.
    pub const ALL: [Action; 6] = [
        Action::Subscribe,
        Action::Unsubscribe,
        Action::Backfill,
        Action::Update,
        Action::Pause,
        Action::Resume,
    ];

    pub fn parse(text: &str) -> Result<Action, UnknownAction> {
        Action::ALL
            .into_iter()
            .find(|action| action.as_str() == text)
            .ok_or_else(|| UnknownAction(text.to_string()))
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Action::Subscribe => "subscribe",
            Action::Unsubscribe => "unsubscribe",
            Action::Backfill => "backfill",
            Action::Update => "update",
            Action::Pause => "pause",
            Action::Resume => "resume",
        }
    }
}

/// An action this worker does not know. The schema's CHECK constraint refuses one at the
/// INSERT, so it can only come from a schema newer than this worker, or a constraint that was
/// dropped; the request fails with this message rather than running as something else.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct UnknownAction(pub String);

impl std::fmt::Display for UnknownAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shown: String = self.0.chars().take(64).collect();
        let known: Vec<&str> = Action::ALL.iter().map(|a| a.as_str()).collect();
        write!(
            f,
            "unknown action {shown:?}: this worker knows {} (upgrade the worker?)",
            known.join(", ")
        )
    }
}

/// A claimed request. `attempts` (after the claim's increment) and `locked_by` fence every
/// write-back: if another worker re-claimed the row meanwhile, ours changes nothing.
#[derive(Clone, Debug)]
pub struct Request {
    pub id: i64,
    /// An unknown action is kept as an error, for the request to fail with.
    pub action: Result<Action, UnknownAction>,
    pub user_id: String,
    pub webhook_url: Option<String>,
    pub subscription_id: Option<i64>,
    pub options: Value,
    pub attempts: i32,
    pub max_attempts: i32,
    /// Seconds from insert to this claim.
    pub waited: f64,
}

impl Request {
    pub fn is_last_attempt(&self) -> bool {
        self.attempts >= self.max_attempts
    }

    /// The action's name for metrics labels and logs: `unknown` for an unknown action, so
    /// the label stays bounded.
    pub fn action_label(&self) -> &'static str {
        match &self.action {
            Ok(action) => action.as_str(),
            Err(_) => "unknown",
        }
    }
}

/// What the worker decided for one attempt.
#[derive(Debug)]
pub enum Outcome {
    Succeeded {
        result: Value,
        changes: Vec<Change>,
    },
    Failed {
        /// `invalid_request`, `sequin_rejected`, `exhausted`, `not_found`, ...
        kind: &'static str,
        message: String,
        status: Option<u16>,
        details: Option<Value>,
        changes: Vec<Change>,
    },
    /// Try again after `delay` (a durable reschedule through `run_at`).
    Retry {
        message: String,
        delay: Duration,
    },
    /// Sequin rejected the token: put the request back untouched (the attempt is not counted).
    AuthRejected {
        message: String,
    },
}

impl Outcome {
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Succeeded { .. } => "succeeded",
            Outcome::Failed { .. } => "failed",
            Outcome::Retry { .. } | Outcome::AuthRejected { .. } => "retried",
        }
    }
}

/// A change to subscription bookkeeping, applied in the same transaction as the fenced
/// request write-back, so a lost lease changes nothing at all.
#[derive(Debug, Clone)]
pub enum Change {
    /// Provisioning finished: record the Sequin ids and names, mark `active`.
    Activate {
        subscription_id: i64,
        endpoint_id: String,
        sink_id: String,
        endpoint_name: String,
        sink_name: String,
    },
    /// Set a subscription's status (`failed`, `deleted`, `paused`, `active`...).
    SetStatus {
        subscription_id: i64,
        status: &'static str,
    },
    /// Update the fields an `update` request changed.
    SetFields {
        subscription_id: i64,
        endpoint: Option<String>,
        transform: Option<Option<String>>,
        actions: Option<Vec<String>>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_action_parses_back_and_the_metric_labels_name_them_all() {
        for action in Action::ALL {
            assert_eq!(Action::parse(action.as_str()), Ok(action));
        }
        let names: Vec<&str> = Action::ALL.iter().map(|a| a.as_str()).collect();
        assert_eq!(names, crate::metrics::ACTIONS);
        assert_eq!(
            Action::parse("Subscribe"),
            Err(UnknownAction("Subscribe".into()))
        );
    }

    #[test]
    fn an_unknown_action_is_named_short_and_quoted() {
        let long = UnknownAction(format!("a\"b{}", "x".repeat(500))).to_string();
        assert!(long.starts_with(r#"unknown action "a\"bxxx"#), "{long}");
        assert!(long.len() < 200, "{long}");
    }
}
