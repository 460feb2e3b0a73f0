//! userhooks: per-user Sequin webhooks provisioned from a Postgres outbox.
pub mod emulator;
