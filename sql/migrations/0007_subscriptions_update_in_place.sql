-- Activating a subscription (provisioning → active) updates its row in place.
--
-- An UPDATE that changes no indexed column, and finds room on the row's page, is a HOT update:
-- a new row version on the same page and no new index entries. `status` was in the predicate
-- of webhook_subscriptions_live_uidx, so every status change wrote one entry into each of the
-- three indexes, several times the cost of an update in place (docs/performance.md).
--
-- The unique index now keys off `live`, a generated column that changes only when a
-- subscription stops being live (deleting, deleted, failed), and each page keeps half of its
-- space for the updated versions (fillfactor 50: with less room, most activations found their
-- page full and did not stay in place). The table takes about twice the disk space it took.
--
-- Adding a stored column rewrites the table under an exclusive lock, held (with 0006's lock on
-- the request table) until `userhooks migrate` commits: with many subscriptions, migrate when
-- a short pause of enqueuing and of the worker is acceptable. Workers from before this
-- migration name the old index predicate in their ON CONFLICT and cannot open subscriptions
-- after it: replace them together with the migration (README, Upgrading).

-- Before the column, so the rewrite that adds it already leaves the room (set after it, the
-- rewritten pages stay full and existing subscriptions would not update in place).
alter table userhooks.webhook_subscriptions set (fillfactor = 50);

alter table userhooks.webhook_subscriptions
    add column live boolean not null
        generated always as (status in ('provisioning', 'active', 'paused')) stored;

comment on column userhooks.webhook_subscriptions.live is
    'Whether the subscription is live (provisioning, active or paused): at most one live subscription per (user_id, endpoint).';

create unique index webhook_subscriptions_live_user_endpoint_uidx
    on userhooks.webhook_subscriptions (user_id, endpoint)
    where live;

drop index userhooks.webhook_subscriptions_live_uidx;

alter index userhooks.webhook_subscriptions_live_user_endpoint_uidx
    rename to webhook_subscriptions_live_uidx;
