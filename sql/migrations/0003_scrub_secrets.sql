-- Per-subscription secrets do not outlive their request.
--
-- A subscribe request may carry `options.secret`; the worker sends it to Sequin inside
-- `encrypted_headers` and stores only its SHA-256 (`webhook_subscriptions.secret_hash`). The
-- request row needs the secret only while it can still be attempted (`pending`, `running`).
-- When the row turns terminal (succeeded, failed, cancelled) — in the same statement as the
-- worker's fenced write-back, so there is no window and no Rust change — this trigger replaces
-- the secret with `{"redacted": true, "sha256": "<hex>"}`. The hash is the same one the worker
-- stores, so a DBA can still tell which secret a request carried.
--
-- The marker is an object on purpose: a string would be taken for a secret if the request
-- were ever run again, and Sequin would get the wrong Authorization header. `userhooks.retry`
-- refuses such requests with a message that says to submit a new one.

create function userhooks.scrub_request_secret() returns trigger
    language plpgsql
    set search_path = pg_catalog, pg_temp
as $$
begin
    new.options := jsonb_set(
        new.options,
        '{secret}',
        case jsonb_typeof(new.options -> 'secret')
            when 'string' then jsonb_build_object(
                'redacted', true,
                'sha256', encode(sha256(convert_to(new.options ->> 'secret', 'UTF8')), 'hex'))
            -- Already redacted (a terminal row updated again): keep the marker.
            when 'object' then case when (new.options -> 'secret') ? 'redacted'
                                    then new.options -> 'secret'
                                    else jsonb_build_object('redacted', true) end
            -- Not a string: invalid anyway, but it may still be someone's secret.
            else jsonb_build_object('redacted', true)
        end);
    return new;
end
$$;

comment on function userhooks.scrub_request_secret() is
    'Replaces options.secret of a request with a redaction marker when the request finishes.';

-- BEFORE UPDATE on any column: the write-back that finishes a request also scrubs it. Also
-- BEFORE INSERT, for a row inserted already terminal (an import, a manual fix-up).
create trigger subscription_requests_scrub_secret
    before insert or update on userhooks.subscription_requests
    for each row
    when (new.status in ('succeeded', 'failed', 'cancelled') and new.options ? 'secret')
    execute function userhooks.scrub_request_secret();

-- Rows that finished before this migration.
update userhooks.subscription_requests
   set options = options
 where status in ('succeeded', 'failed', 'cancelled') and options ? 'secret';

-- A request whose secret was scrubbed cannot be run again: the secret is gone. Say so instead
-- of re-queueing it (it would fail on `option secret must be a string`, or worse).
create or replace function userhooks.retry(request_id bigint)
    returns boolean
    language plpgsql security definer
    set search_path = pg_catalog, pg_temp
as $$
declare
    requeued bigint;
begin
    if exists (select 1
                 from userhooks.subscription_requests r
                where r.id = retry.request_id and r.status = 'failed'
                  and jsonb_typeof(r.options -> 'secret') = 'object'
                  and (r.options -> 'secret') ? 'redacted') then
        raise exception 'request % carried a secret, which was erased when it failed; insert a new request with the secret instead of retrying this one', request_id
            using errcode = 'object_not_in_prerequisite_state';
    end if;
    update userhooks.subscription_requests
       set status = 'pending', attempts = 0, run_at = now(), locked_by = null,
           locked_until = null, finished_at = null, result = null, updated_at = now()
     where id = retry.request_id and status = 'failed'
    returning id into requeued;
    if requeued is null then
        return false;
    end if;
    perform pg_notify('userhooks_requests', '');
    return true;
end
$$;
