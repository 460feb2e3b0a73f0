//! Options of each action, parsed strictly: an unknown key or a bad value is a clear error
//! (the request fails, nothing is provisioned), never silently ignored.

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::ProvisionError;

const SUBSCRIBE_OPTIONS: &[&str] = &["transform", "backfill", "actions", "headers", "secret"];
pub const CHANGE_ACTIONS: &[&str] = &["insert", "update", "delete"];

/// Options of a `subscribe` request, checked strictly: an unknown key is an error, not ignored.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct SubscribeOptions {
    pub transform: Option<String>,
    pub backfill: bool,
    pub actions: Option<Vec<String>>,
    pub headers: Map<String, Value>,
    pub secret: Option<String>,
}

fn object<'a>(options: &'a Value, action: &str) -> Result<&'a Map<String, Value>, ProvisionError> {
    options.as_object().ok_or_else(|| {
        ProvisionError::Invalid(format!("options of {action} must be a JSON object"))
    })
}

fn reject_unknown(
    map: &Map<String, Value>,
    action: &str,
    allowed: &[&str],
) -> Result<(), ProvisionError> {
    if let Some(key) = map.keys().find(|k| !allowed.contains(&k.as_str())) {
        let shown: String = key.chars().take(64).collect();
        return Err(ProvisionError::Invalid(format!(
            "unknown option `{shown}` for {action} (allowed: {})",
            if allowed.is_empty() {
                "none".to_string()
            } else {
                allowed.join(", ")
            }
        )));
    }
    Ok(())
}

fn parse_transform(value: &Value) -> Result<Option<String>, ProvisionError> {
    match value {
        Value::Null => Ok(None),
        Value::String(name) if name == "none" => Ok(None),
        Value::String(name)
            if !name.is_empty()
                && name.len() <= 255
                && name.chars().all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c)) =>
        {
            Ok(Some(name.clone()))
        }
        _ => Err(ProvisionError::Invalid(
            "option `transform` must be the name of a Sequin transform function ([A-Za-z0-9_.-]) or \"none\"".to_string(),
        )),
    }
}

fn parse_actions(value: &Value) -> Result<Vec<String>, ProvisionError> {
    let bad = || {
        ProvisionError::Invalid(
            "option `actions` must be a non-empty list of \"insert\", \"update\", \"delete\""
                .to_string(),
        )
    };
    let items = value.as_array().ok_or_else(bad)?;
    let mut actions = Vec::new();
    for item in items {
        let action = item
            .as_str()
            .filter(|a| CHANGE_ACTIONS.contains(a))
            .ok_or_else(bad)?;
        if !actions.iter().any(|a| a == action) {
            actions.push(action.to_string());
        }
    }
    if actions.is_empty() {
        return Err(bad());
    }
    Ok(actions)
}

impl SubscribeOptions {
    pub fn parse(options: &Value) -> Result<Self, ProvisionError> {
        let map = object(options, "subscribe")?;
        reject_unknown(map, "subscribe", SUBSCRIBE_OPTIONS)?;
        let mut parsed = SubscribeOptions::default();
        if let Some(value) = map.get("transform") {
            parsed.transform = parse_transform(value)?;
        }
        if let Some(value) = map.get("backfill") {
            parsed.backfill = value.as_bool().ok_or_else(|| {
                ProvisionError::Invalid("option `backfill` must be true or false".to_string())
            })?;
        }
        if let Some(value) = map.get("actions") {
            parsed.actions = Some(parse_actions(value)?);
        }
        if let Some(value) = map.get("headers") {
            let headers = value.as_object().ok_or_else(|| {
                ProvisionError::Invalid(
                    "option `headers` must be an object of header names to string values"
                        .to_string(),
                )
            })?;
            if headers.len() > 20 {
                return Err(ProvisionError::Invalid(
                    "option `headers` allows at most 20 headers".to_string(),
                ));
            }
            for (name, value) in headers {
                let valid_name = !name.is_empty()
                    && name.len() <= 128
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
                let valid_value = value
                    .as_str()
                    .is_some_and(|v| v.len() <= 1024 && !v.chars().any(|c| c.is_control()));
                if !valid_name || !valid_value {
                    return Err(ProvisionError::Invalid(format!(
                        "option `headers` has an invalid header `{}`: names are HTTP tokens, values strings of at most 1024 printable characters",
                        name.chars().take(64).collect::<String>()
                    )));
                }
                if let Some(reason) = forbidden_header(name) {
                    return Err(ProvisionError::Invalid(format!(
                        "option `headers` must not set {name}: {reason}"
                    )));
                }
                if let Some(first) = headers
                    .keys()
                    .take_while(|other| *other != name)
                    .find(|other| other.eq_ignore_ascii_case(name))
                {
                    return Err(ProvisionError::Invalid(format!(
                        "option `headers` sets {first} and {name}: header names ignore case, keep one"
                    )));
                }
            }
            parsed.headers = headers.clone();
        }
        if let Some(value) = map.get("secret") {
            let secret = value
                .as_str()
                .filter(|s| !s.is_empty() && s.len() <= 1024 && !s.chars().any(|c| c.is_control()))
                .ok_or_else(|| {
                    ProvisionError::Invalid(
                        "option `secret` must be a string of 1 to 1024 printable characters"
                            .to_string(),
                    )
                })?;
            parsed.secret = Some(secret.to_string());
        }
        Ok(parsed)
    }
}

/// Why a header may not be set through option `headers`, or `None` if it may. `name` is
/// already known to be an HTTP token; the comparison ignores case, as HTTP does.
fn forbidden_header(name: &str) -> Option<&'static str> {
    const HOP_BY_HOP: &str = "it is a hop-by-hop header, which belongs to one connection, \
                              not to the webhook request (RFC 9110, section 7.6.1)";
    const FRAMING: &str = "the HTTP client frames the body itself; a second value would \
                           make the request ambiguous to the receiver";
    let lower = name.to_ascii_lowercase();
    Some(match lower.as_str() {
        // Sent in plain text, a header is stored by Sequin and returned by its API; the
        // secret goes into `encrypted_headers`, which Sequin never shows again. Sequin also
        // merges the two maps by exact name, so `authorization` next to the secret's
        // `Authorization` would send both.
        "authorization" => "use option `secret`, which Sequin stores encrypted",
        "host" => {
            "the HTTP client sets it from webhook_url; another value could route the \
                   request to a different site on the same server"
        }
        "content-length" | "transfer-encoding" => FRAMING,
        "connection" | "keep-alive" | "te" | "trailer" | "upgrade" => HOP_BY_HOP,
        _ if lower.starts_with("proxy-") => HOP_BY_HOP,
        _ => return None,
    })
}

pub fn secret_hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

const UPDATE_OPTIONS: &[&str] = &["webhook_url", "transform", "actions"];

/// Options of an `update` request: what to change. Absent keys stay as they are.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct UpdateOptions {
    pub webhook_url: Option<String>,
    /// `Some(None)` detaches the transform (`"none"`).
    pub transform: Option<Option<String>>,
    pub actions: Option<Vec<String>>,
}

impl UpdateOptions {
    pub fn parse(options: &Value) -> Result<Self, ProvisionError> {
        let map = object(options, "update")?;
        reject_unknown(map, "update", UPDATE_OPTIONS)?;
        let mut parsed = UpdateOptions::default();
        if let Some(value) = map.get("webhook_url") {
            let url = value.as_str().filter(|u| !u.is_empty()).ok_or_else(|| {
                ProvisionError::Invalid(
                    "option `webhook_url` must be a non-empty string".to_string(),
                )
            })?;
            parsed.webhook_url = Some(url.to_string());
        }
        if let Some(value) = map.get("transform") {
            parsed.transform = Some(parse_transform(value)?);
        }
        if let Some(value) = map.get("actions") {
            parsed.actions = Some(parse_actions(value)?);
        }
        if parsed == UpdateOptions::default() {
            return Err(ProvisionError::Invalid(format!(
                "update needs at least one of the options {}",
                UPDATE_OPTIONS.join(", ")
            )));
        }
        Ok(parsed)
    }
}

const RESUME_OPTIONS: &[&str] = &["replay"];

/// Options of a `resume` request.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ResumeOptions {
    /// Replay the user's rows through a backfill once the sink is back: changes made while
    /// paused are not delivered otherwise.
    pub replay: bool,
}

impl ResumeOptions {
    pub fn parse(options: &Value) -> Result<Self, ProvisionError> {
        let map = object(options, "resume")?;
        reject_unknown(map, "resume", RESUME_OPTIONS)?;
        let replay = match map.get("replay") {
            None => false,
            Some(value) => value.as_bool().ok_or_else(|| {
                ProvisionError::Invalid("option `replay` must be true or false".to_string())
            })?,
        };
        Ok(ResumeOptions { replay })
    }
}

/// Actions without options (`unsubscribe`, `backfill`, `pause`) accept only `{}`.
pub fn expect_no_options(options: &Value, action: &str) -> Result<(), ProvisionError> {
    reject_unknown(object(options, action)?, action, &[])
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn resume_takes_only_a_boolean_replay() {
        assert!(!ResumeOptions::parse(&json!({})).unwrap().replay);
        assert!(
            ResumeOptions::parse(&json!({"replay": true}))
                .unwrap()
                .replay
        );
        let err = ResumeOptions::parse(&json!({"replay": "yes"})).unwrap_err();
        assert!(
            err.to_string().contains("`replay` must be true or false"),
            "{err}"
        );
        let err = ResumeOptions::parse(&json!({"backfill": true})).unwrap_err();
        assert!(
            err.to_string()
                .contains("unknown option `backfill` for resume (allowed: replay)"),
            "{err}"
        );
    }
}
