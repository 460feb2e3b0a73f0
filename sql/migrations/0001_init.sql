-- userhooks schema, version 1.
-- Applied by `userhooks migrate` inside one transaction that holds an advisory lock, so two
-- processes migrating at once serialize and the second one finds nothing left to do.

create schema if not exists userhooks;

-- The outbox. Applications INSERT here (directly or via userhooks.subscribe() & co.);
-- the worker claims, provisions and writes the outcome back into the same row.
create table userhooks.subscription_requests (
    id              bigint generated always as identity primary key,
    action          text not null
        constraint subscription_requests_action_check
        check (action in ('subscribe', 'unsubscribe', 'backfill', 'update', 'pause', 'resume')),
    user_id         text not null
        constraint subscription_requests_user_id_check
        check (length(user_id) between 1 and 255),
    webhook_url     text
        constraint subscription_requests_webhook_url_length_check
        check (length(webhook_url) between 1 and 2048),
    subscription_id bigint,
    options         jsonb not null default '{}'
        constraint subscription_requests_options_check
        check (jsonb_typeof(options) = 'object' and octet_length(options::text) <= 16384),
    status          text not null default 'pending'
        constraint subscription_requests_status_check
        check (status in ('pending', 'running', 'succeeded', 'failed', 'cancelled')),
    attempts        int not null default 0,
    max_attempts    int not null default 12
        constraint subscription_requests_max_attempts_check
        check (max_attempts between 1 and 1000),
    run_at          timestamptz not null default now(),
    locked_by       text,
    locked_until    timestamptz,
    last_error      text,
    result          jsonb,
    claimed_at      timestamptz,
    created_at      timestamptz not null default now(),
    updated_at      timestamptz not null default now(),
    finished_at     timestamptz,
    constraint subscription_requests_subscribe_needs_url_check
        check (action <> 'subscribe' or webhook_url is not null)
);

comment on table userhooks.subscription_requests is
    'Outbox of subscription work. INSERT a row (or call userhooks.subscribe()); the userhooks worker does the rest.';

-- The claim path reads only this index: it holds just the rows that are not terminal, so it
-- stays small however many finished rows the table keeps for retention.
create index subscription_requests_claimable_idx
    on userhooks.subscription_requests (run_at, id)
    where status in ('pending', 'running');

-- Per-user ordering check ("is there an earlier unfinished request of this user?") and the
-- lookup of a user's open requests.
create index subscription_requests_user_open_idx
    on userhooks.subscription_requests (user_id, id)
    where status in ('pending', 'running');

-- Retention deletes terminal rows by age in small batches.
create index subscription_requests_finished_idx
    on userhooks.subscription_requests (finished_at)
    where status in ('succeeded', 'failed', 'cancelled');

-- The request table is small and hot: vacuum it early so dead tuples from claims and
-- write-backs do not pile up in the claim index.
alter table userhooks.subscription_requests set (
    autovacuum_vacuum_scale_factor = 0.02,
    autovacuum_analyze_scale_factor = 0.02,
    fillfactor = 80
);

-- Wake the worker. Statement-level, so a bulk INSERT costs one NOTIFY; no payload, the worker
-- re-reads the table (the table is the truth, NOTIFY only a hint).
create function userhooks.notify_requests() returns trigger
    language plpgsql as $$
begin
    perform pg_notify('userhooks_requests', '');
    return null;
end
$$;

create trigger subscription_requests_notify
    after insert on userhooks.subscription_requests
    for each statement execute function userhooks.notify_requests();

-- Tell waiting applications that a request finished.
create function userhooks.notify_request_done() returns trigger
    language plpgsql as $$
begin
    perform pg_notify('userhooks_request_done',
                      json_build_object('id', new.id, 'status', new.status)::text);
    return null;
end
$$;

create trigger subscription_requests_done
    after update of status on userhooks.subscription_requests
    for each row
    when (new.status in ('succeeded', 'failed', 'cancelled')
          and old.status is distinct from new.status)
    execute function userhooks.notify_request_done();

-- One row per subscription ever made; seed-compatible columns first.
create table userhooks.webhook_subscriptions (
    id                 bigint generated always as identity primary key,
    user_id            text not null,
    endpoint           text not null,
    sequin_sink_id     uuid,
    created_at         timestamptz not null default now(),
    sequin_endpoint_id uuid,
    sink_name          text,
    endpoint_name      text,
    source_table       text not null,
    transform          text,
    actions            text[] not null default array['insert', 'update', 'delete'],
    -- sha256 of the per-subscription secret (never the secret itself): lets us notice a change.
    secret_hash        text,
    status             text not null default 'provisioning'
        constraint webhook_subscriptions_status_check
        check (status in ('provisioning', 'active', 'paused', 'deleting', 'deleted', 'failed')),
    updated_at         timestamptz not null default now(),
    deleted_at         timestamptz
);

-- At most one live subscription per (user, URL): a second subscribe finds this one.
create unique index webhook_subscriptions_live_uidx
    on userhooks.webhook_subscriptions (user_id, endpoint)
    where status in ('provisioning', 'active', 'paused');

create index webhook_subscriptions_user_idx
    on userhooks.webhook_subscriptions (user_id);

create table userhooks.backfills (
    id                   bigint generated always as identity primary key,
    subscription_id      bigint not null references userhooks.webhook_subscriptions (id),
    sequin_backfill_id   uuid not null,
    state                text not null
        constraint backfills_state_check
        check (state in ('active', 'paused', 'completed', 'cancelled', 'failed')),
    rows_initial_count   bigint,
    rows_processed_count bigint not null default 0,
    rows_ingested_count  bigint not null default 0,
    started_at           timestamptz not null default now(),
    completed_at         timestamptz,
    updated_at           timestamptz not null default now()
);

create unique index backfills_sequin_id_uidx on userhooks.backfills (sequin_backfill_id);

-- The progress tracker reads only the backfills that are still moving.
create index backfills_open_idx on userhooks.backfills (id)
    where state in ('active', 'paused');

create function userhooks.notify_backfill_done() returns trigger
    language plpgsql as $$
begin
    perform pg_notify('userhooks_backfill_done',
                      json_build_object('id', new.id,
                                        'subscription_id', new.subscription_id,
                                        'state', new.state)::text);
    return null;
end
$$;

create trigger backfills_done
    after update of state on userhooks.backfills
    for each row
    when (new.state in ('completed', 'cancelled', 'failed')
          and old.state is distinct from new.state)
    execute function userhooks.notify_backfill_done();
