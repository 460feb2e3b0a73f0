//! userhooks: per-user Sequin webhooks provisioned from a Postgres outbox.
