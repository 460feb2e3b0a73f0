//! userhooks: per-user Sequin webhooks provisioned from a Postgres outbox.
//!
//! Data flows one way: [`queue`] claims requests, [`provision`] carries them out against
//! Sequin through [`sequin`], and [`queue`] writes the outcome back. The requests, outcomes
//! and changes they pass along are [`model`]'s. [`worker`] runs the loop.

pub mod backfills;
pub mod batch;
pub mod cli;
pub mod config;
pub mod db;
#[cfg(feature = "dev")]
pub mod dev;
pub mod doctor;
pub mod health;
pub mod housekeeping;
pub mod listener;
pub mod metrics;
pub mod model;
pub mod ops;
pub mod provision;
pub mod queue;
pub mod reconcile;
pub mod retry;
pub mod sequin;
pub mod serve;
pub mod shutdown;
pub mod subscriptions;
pub mod telemetry;
pub mod tls;
pub mod webhook_url;
pub mod worker;
pub mod writeback;

pub use config::Config;
pub use worker::{build, App};
