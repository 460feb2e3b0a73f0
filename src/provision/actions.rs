//! The actions on existing subscriptions: unsubscribe, backfill, update, pause, resume.

use serde_json::{json, Value};

use super::{
    expect_no_options, Created, Names, ProvisionError, Provisioner, ResumeOptions,
    SubscribeOptions, UpdateOptions,
};
use crate::model::{Change, Request};
use crate::sequin::{ErrorClass, Resource, SequinError};
use crate::subscriptions::{self, Selector, Subscription};
use crate::webhook_url;

/// Unsubscribe also finishes what a crashed unsubscribe left in `deleting`.
const REMOVABLE: &[&str] = &["provisioning", "active", "paused", "deleting"];
/// What backfill/update/pause/resume can act on.
const READY: &[&str] = &["active", "paused"];

/// The Sequin names of a subscription: as recorded, or derived (one that never finished
/// provisioning has none recorded, but its names are deterministic).
fn names_of(subscription: &Subscription, prefix: &str) -> Names {
    let derived = Names::new(prefix, subscription.id);
    Names {
        endpoint: subscription
            .endpoint_name
            .clone()
            .unwrap_or(derived.endpoint),
        sink: subscription.sink_name.clone().unwrap_or(derived.sink),
    }
}

/// A backfill that was started (or found already running).
pub(super) struct BackfillStarted {
    pub id: i64,
    pub sequin_id: String,
    pub already_running: bool,
}

impl Provisioner {
    /// The subscriptions a request names: by `subscription_id`, by `webhook_url`, or all of
    /// the user's, limited to `statuses`. Always scoped to the request's user.
    async fn resolve(
        &self,
        request: &Request,
        statuses: &[&str],
    ) -> Result<Vec<Subscription>, ProvisionError> {
        let client = self.pool.get().await?;
        // Stored URLs are normalized; compare like with like.
        let url = request
            .webhook_url
            .as_ref()
            .map(|url| webhook_url::normalize(url).unwrap_or_else(|| url.clone()));
        let which = match (request.subscription_id, &url) {
            (Some(id), _) => Selector::Id(id),
            (None, Some(url)) => Selector::Url(url),
            (None, None) => Selector::All,
        };
        Ok(subscriptions::of_user(&client, &request.user_id, which, statuses).await?)
    }

    /// Exactly one subscription, or a clear reason why not.
    async fn resolve_one(&self, request: &Request) -> Result<Subscription, ProvisionError> {
        let mut found = self.resolve(request, READY).await?;
        let which = describe_target(request);
        match found.len() {
            1 => Ok(found.remove(0)),
            0 => {
                // Distinguish "not ready yet" from "does not exist".
                let provisioning = self.resolve(request, &["provisioning"]).await?;
                if provisioning.is_empty() {
                    Err(ProvisionError::NotFound(format!(
                        "user {} has no live subscription{which}; nothing to {}",
                        quoted(&request.user_id),
                        request.action_label()
                    )))
                } else {
                    Err(ProvisionError::NotReady(format!(
                        "subscription {} of user {} is still being provisioned",
                        provisioning[0].id,
                        quoted(&request.user_id)
                    )))
                }
            }
            n => Err(ProvisionError::Invalid(format!(
                "user {} has {n} live subscriptions; say which one with webhook_url or subscription_id",
                quoted(&request.user_id)
            ))),
        }
    }

    /// Delete each named subscription's sink, then its endpoint. Idempotent: what is already
    /// gone counts as deleted, and nothing to remove is a success with `removed: 0`.
    pub(super) async fn unsubscribe(
        &self,
        request: &Request,
    ) -> Result<(Value, Vec<Change>), ProvisionError> {
        expect_no_options(&request.options, "unsubscribe")?;
        let targets = self.resolve(request, REMOVABLE).await?;
        if targets.is_empty() && request.subscription_id.is_some() {
            return Err(ProvisionError::NotFound(format!(
                "user {} has no live subscription{}",
                quoted(&request.user_id),
                describe_target(request)
            )));
        }
        let ids: Vec<i64> = targets.iter().map(|t| t.id).collect();
        if !ids.is_empty() {
            let client = self.pool.get().await?;
            subscriptions::mark_deleting(&client, &ids).await?;
        }
        let mut changes = Vec::with_capacity(targets.len());
        for target in &targets {
            let names = names_of(target, &self.config.name_prefix);
            self.sequin.delete_sink(&names.sink).await?;
            match self.sequin.delete_endpoint(&names.endpoint).await {
                Ok(_) => {}
                // "in use by N sink consumer(s)": a sink we do not know about points at it.
                Err(SequinError::Rejected {
                    status: 400,
                    summary,
                    ..
                }) if summary.contains("in use") => {
                    return Err(ProvisionError::Sequin(SequinError::Unavailable {
                        status: 400,
                        summary: format!("{summary} (will retry once the sink is gone)"),
                        retry_after: None,
                    }))
                }
                Err(err) => return Err(err.into()),
            }
            changes.push(Change::SetStatus {
                subscription_id: target.id,
                status: "deleted",
            });
        }
        Ok((
            json!({ "removed": ids.len(), "subscription_ids": ids }),
            changes,
        ))
    }

    pub(super) async fn backfill(
        &self,
        request: &Request,
    ) -> Result<(Value, Vec<Change>), ProvisionError> {
        expect_no_options(&request.options, "backfill")?;
        let target = self.resolve_one(request).await?;
        if target.status == "paused" {
            return Err(ProvisionError::Invalid(format!(
                "subscription {} is paused and has no sink to backfill; resume it with options {{\"replay\": true}} to replay the user's rows",
                target.id
            )));
        }
        let names = names_of(&target, &self.config.name_prefix);
        let started = self.start_backfill(target.id, &names.sink).await?;
        let mut result = json!({
            "subscription_id": target.id,
            "backfill_id": started.id,
            "sequin_backfill_id": started.sequin_id,
        });
        if started.already_running {
            result["already_running"] = json!(true);
        }
        Ok((result, Vec::new()))
    }

    /// Start a backfill for a subscribe or a resume and put its ids in `result`. The
    /// subscription works without its history, so a permanent refusal is reported in the
    /// result (`backfill_error`), not as a failed request.
    pub(super) async fn replay_into(
        &self,
        subscription_id: i64,
        sink: &str,
        result: &mut Value,
    ) -> Result<(), ProvisionError> {
        match self.start_backfill(subscription_id, sink).await {
            Ok(started) => {
                result["backfill_id"] = json!(started.id);
                result["sequin_backfill_id"] = json!(started.sequin_id);
                Ok(())
            }
            Err(err) if err.class() == ErrorClass::Permanent => {
                result["backfill_error"] = json!(err.to_string());
                Ok(())
            }
            Err(err) => Err(err),
        }
    }

    /// Start a backfill of the subscription's sink and record it in `userhooks.backfills`.
    /// A backfill already running is returned instead of starting a second one.
    pub(super) async fn start_backfill(
        &self,
        subscription_id: i64,
        sink: &str,
    ) -> Result<BackfillStarted, ProvisionError> {
        let client = self.pool.get().await?;
        if let Some(row) = client
            .query_opt(
                "select id, sequin_backfill_id::text from userhooks.backfills
                  where subscription_id = $1 and state in ('active', 'paused')
                  order by id desc limit 1",
                &[&subscription_id],
            )
            .await?
        {
            return Ok(BackfillStarted {
                id: row.get(0),
                sequin_id: row.get(1),
                already_running: true,
            });
        }
        let backfill = match self.sequin.create_backfill(sink).await {
            Ok(backfill) => backfill.body(),
            Err(err) if is_backfill_running(&err) => {
                // An earlier attempt started it and crashed before recording it (or someone
                // started one in the console): adopt the newest open one.
                let open = self
                    .sequin
                    .list_backfills(sink)
                    .await?
                    .into_iter()
                    .find(|b| matches!(b["state"].as_str(), Some("active" | "paused")));
                match open {
                    Some(backfill) => backfill,
                    None => return Err(err.into()),
                }
            }
            Err(err) => return Err(err.into()),
        };
        let sequin_id = backfill["id"].as_str().unwrap_or_default().to_string();
        let state = backfill["state"].as_str().unwrap_or("active").to_string();
        let row = client
            .query_one(
                "with inserted as (
                     insert into userhooks.backfills (subscription_id, sequin_backfill_id, state)
                     values ($1, $2::text::uuid, $3)
                     on conflict (sequin_backfill_id) do nothing
                     returning id)
                 select id from inserted
                 union all
                 select id from userhooks.backfills where sequin_backfill_id = $2::text::uuid
                 limit 1",
                &[&subscription_id, &sequin_id, &state],
            )
            .await?;
        self.backfill_hint
            .store(true, std::sync::atomic::Ordering::Relaxed);
        Ok(BackfillStarted {
            id: row.get(0),
            sequin_id,
            already_running: false,
        })
    }

    /// Change URL, transform or actions, calling Sequin only for what actually changed:
    /// every sink update restarts replication for the whole slot.
    pub(super) async fn update(
        &self,
        request: &Request,
        created: &mut Created,
    ) -> Result<(Value, Vec<Change>), ProvisionError> {
        let options = UpdateOptions::parse(&request.options)?;
        if options.actions.is_some() {
            // Refuses `delete` while the table cannot deliver it (actions not named stay).
            self.deliverable_actions(&mut options.actions.clone())
                .await?;
        }
        let target = self.resolve_one(request).await?;
        created.subscription_id = None; // never compensate an existing subscription
        let names = names_of(&target, &self.config.name_prefix);
        let mut changed = Vec::new();
        let mut new_endpoint = None;
        if let Some(raw) = &options.webhook_url {
            let url = self.validate_url(Some(raw)).await?;
            if url.as_str() != target.endpoint {
                let client = self.pool.get().await?;
                if subscriptions::url_taken(&client, &request.user_id, url.as_str(), target.id)
                    .await?
                {
                    return Err(ProvisionError::Invalid(format!(
                        "user {} already has a subscription for {url}",
                        quoted(&request.user_id)
                    )));
                }
                self.sequin
                    .update_endpoint(&names.endpoint, &json!({ "url": url.as_str() }))
                    .await?;
                changed.push("webhook_url");
                new_endpoint = Some(url.as_str().to_string());
            }
        }
        let mut sink_patch = serde_json::Map::new();
        let mut new_transform = None;
        if let Some(transform) = &options.transform {
            if *transform != target.transform {
                sink_patch.insert(
                    "transform".to_string(),
                    json!(transform.as_deref().unwrap_or("none")),
                );
                changed.push("transform");
                new_transform = Some(transform.clone());
            }
        }
        let mut new_actions = None;
        if let Some(actions) = &options.actions {
            let mut wanted = actions.clone();
            let mut current = target.actions.clone();
            wanted.sort();
            current.sort();
            if wanted != current {
                sink_patch.insert("actions".to_string(), json!(actions));
                changed.push("actions");
                new_actions = Some(actions.clone());
            }
        }
        // A paused subscription has no sink: resume creates it from the recorded fields.
        if !sink_patch.is_empty() && target.status != "paused" {
            self.sequin
                .update_sink(&names.sink, &Value::Object(sink_patch))
                .await?;
        }
        let mut changes = Vec::new();
        if !changed.is_empty() {
            changes.push(Change::SetFields {
                subscription_id: target.id,
                endpoint: new_endpoint,
                transform: new_transform,
                actions: new_actions,
            });
        }
        Ok((
            json!({ "subscription_id": target.id, "changed": changed }),
            changes,
        ))
    }

    /// Pause: delete the subscription's sink, keep its endpoint.
    ///
    /// Not Sequin's `paused` status: a paused sink is still routed every change and buffers
    /// it, and once its store is full the replication slot stops for every sink on it. Not
    /// `disabled` either: in Sequin v0.14.6 (`lib/sequin/runtime/consumer_lifecycle_event_worker.ex`)
    /// an update to `disabled` neither refreshes the routing context nor stops the sink's
    /// message store, so the sink keeps being routed and buffering until something else
    /// restarts replication, and the update back to `active` restarts replication of the
    /// whole slot. A delete refreshes routing and stops the sink's store at once; resume
    /// creates it again, which only refreshes routing.
    ///
    /// Pausing a paused subscription deletes its sink again (a 404 counts as gone), so one
    /// left `paused` in Sequin by an older userhooks goes too.
    pub(super) async fn pause(
        &self,
        request: &Request,
    ) -> Result<(Value, Vec<Change>), ProvisionError> {
        expect_no_options(&request.options, "pause")?;
        let target = self.resolve_one(request).await?;
        let names = names_of(&target, &self.config.name_prefix);
        self.sequin.delete_sink(&names.sink).await?;
        // Sequin deleted the sink's backfills with it; a resume with replay starts anew.
        let client = self.pool.get().await?;
        client
            .execute(
                "update userhooks.backfills
                    set state = 'cancelled', completed_at = now(), updated_at = now()
                  where subscription_id = $1 and state in ('active', 'paused')",
                &[&target.id],
            )
            .await?;
        if target.status == "paused" {
            return Ok((
                json!({ "subscription_id": target.id, "changed": [] }),
                Vec::new(),
            ));
        }
        Ok((
            json!({ "subscription_id": target.id, "changed": ["status"] }),
            vec![Change::SetStatus {
                subscription_id: target.id,
                status: "paused",
            }],
        ))
    }

    /// Resume: create the sink again under its deterministic name (adopting it if an
    /// earlier attempt already did), from the subscription's recorded fields. With
    /// `{"replay": true}`, then backfill the user's rows: changes made while paused are
    /// not delivered otherwise.
    pub(super) async fn resume(
        &self,
        request: &Request,
    ) -> Result<(Value, Vec<Change>), ProvisionError> {
        let options = ResumeOptions::parse(&request.options)?;
        let target = self.resolve_one(request).await?;
        if target.status == "active" {
            return Ok((
                json!({ "subscription_id": target.id, "changed": [] }),
                Vec::new(),
            ));
        }
        let names = names_of(&target, &self.config.name_prefix);
        let endpoint_id = match &target.sequin_endpoint_id {
            Some(id) => id.clone(),
            None => {
                self.sequin
                    .get_endpoint(&names.endpoint)
                    .await?
                    .ok_or_else(|| {
                        ProvisionError::NotFound(format!(
                            "endpoint {} of subscription {} is missing in Sequin; run `userhooks reconcile --repair` or subscribe again",
                            names.endpoint, target.id
                        ))
                    })?
                    .id
            }
        };
        let fields = SubscribeOptions {
            transform: target.transform.clone(),
            actions: Some(target.actions.clone()),
            ..SubscribeOptions::default()
        };
        let sink = self
            .recreate_sink(&names, &request.user_id, &fields)
            .await?;
        let mut result = json!({
            "subscription_id": target.id,
            "changed": ["status"],
            "sink_id": sink.id,
            "sink_name": names.sink,
        });
        if options.replay {
            self.replay_into(target.id, &names.sink, &mut result)
                .await?;
        }
        Ok((
            result,
            vec![Change::Activate {
                subscription_id: target.id,
                endpoint_id,
                sink_id: sink.id,
                endpoint_name: names.endpoint,
                sink_name: names.sink,
            }],
        ))
    }

    /// Create the sink, or adopt it if the name is taken. A sink found in another status
    /// than `active` (left `paused` or `disabled` by an older userhooks or by hand) is
    /// replaced, not updated: an update to `active` restarts replication of the whole slot.
    async fn recreate_sink(
        &self,
        names: &Names,
        user_id: &str,
        fields: &SubscribeOptions,
    ) -> Result<Resource, SequinError> {
        let sink = self.ensure_sink(names, user_id, fields).await?;
        if sink.str_field("status").as_deref() == Some("active") {
            return Ok(sink);
        }
        self.sequin.delete_sink(&names.sink).await?;
        self.ensure_sink(names, user_id, fields).await
    }
}

fn is_backfill_running(err: &SequinError) -> bool {
    err.status() == Some(422)
        && err
            .details()
            .and_then(|d| d.get("sink_consumer_id"))
            .is_some_and(|v| v.to_string().contains("already has an active backfill"))
}

fn describe_target(request: &Request) -> String {
    match (&request.subscription_id, &request.webhook_url) {
        (Some(id), _) => format!(" with id {id}"),
        (None, Some(url)) => format!(" for {url}"),
        (None, None) => String::new(),
    }
}

/// User ids are arbitrary text: quote them so an empty or odd id reads clearly.
fn quoted(user_id: &str) -> String {
    let shown: String = user_id.chars().take(64).collect();
    format!("{shown:?}")
}
