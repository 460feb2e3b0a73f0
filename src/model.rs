//! The domain: what an application asks for (a [`Request`] and its [`Action`]), what an
//! attempt decided (an [`Outcome`]), and the [`Change`]s to subscriptions that go with it.
//! Persistence lives elsewhere: [`crate::queue`] claims requests and writes outcomes back,
//! [`crate::subscriptions`] applies the changes in the same transaction; [`crate::provision`]
//! turns a request into an outcome.

use std::time::Duration;

use serde_json::Value;

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
    pub fn parse(text: &str) -> Option<Action> {
        Some(match text {
            "subscribe" => Action::Subscribe,
            "unsubscribe" => Action::Unsubscribe,
            "backfill" => Action::Backfill,
            "update" => Action::Update,
            "pause" => Action::Pause,
            "resume" => Action::Resume,
            _ => return None,
        })
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

/// A claimed request. `attempts` (after the claim's increment) and `locked_by` fence every
/// write-back: if another worker re-claimed the row meanwhile, ours changes nothing.
#[derive(Clone, Debug)]
pub struct Request {
    pub id: i64,
    pub action: Action,
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
