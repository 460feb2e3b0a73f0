-- Requests of one user run in the order they were made.
--
-- The worker runs a user's requests in id order: a request waits while an earlier request of
-- the same user is pending or running. Two ways around that order are closed here.
--
-- 1. `userhooks.retry(id)` re-queued a failed request in place, whatever came after it. A
--    user who subscribed (failed during an outage) and then unsubscribed (succeeded) was
--    subscribed again by `userhooks retry --failed`. Now a failed request is re-queued only
--    if no later request of the same user has run to success or is still pending or running:
--    re-running it would put it after those, or in front of them. Later requests that failed
--    or were cancelled do not count: they had no lasting effect, and retrying them too, oldest
--    first, replays the user's history in its order. A refused retry raises
--    `object_not_in_prerequisite_state` naming the later request; the remedy is a new request
--    (it takes its place after everything the user did). `retry` still returns false when the
--    request is not failed (or does not exist), and true when it re-queued it.
--
-- 2. A request with `run_at` months ahead held back every later request of its user until
--    then. `run_at` may now be at most 30 days ahead when a row is inserted or its run_at is
--    changed. Nothing of userhooks comes near: the worker's backoff reschedules at most
--    5 minutes ahead, `retry` and a worker's shutdown schedule for now. Rows stored before this
--    migration are left as they are (a DBA chose their time); to list them:
--        select id, user_id, run_at from userhooks.subscription_requests
--         where status = 'pending' and run_at > now() + interval '30 days';

create or replace function userhooks.retry(request_id bigint)
    returns boolean
    language plpgsql security definer
    set search_path = pg_catalog, pg_temp
as $$
declare
    failed  userhooks.subscription_requests%rowtype;
    later   record;
begin
    -- Locked, so two retries of one request, or a retry and a DBA's update, take turns.
    select * into failed
      from userhooks.subscription_requests r
     where r.id = retry.request_id
       for update;
    if not found or failed.status <> 'failed' then
        return false;
    end if;
    if jsonb_typeof(failed.options -> 'secret') = 'object'
       and (failed.options -> 'secret') ? 'redacted' then
        raise exception 'request % carried a secret, which was erased when it failed; insert a new request with the secret instead of retrying this one', request_id
            using errcode = 'object_not_in_prerequisite_state';
    end if;
    select l.id, l.action, l.status into later
      from userhooks.subscription_requests l
     where l.user_id = failed.user_id
       and l.id > failed.id
       and l.status in ('pending', 'running', 'succeeded')
     order by l.id
     limit 1;
    if found then
        raise exception 'request % not re-queued: user % has a later request % (%, %); insert a new request instead',
                request_id, to_json(failed.user_id)::text, later.id, later.action, later.status
            using errcode = 'object_not_in_prerequisite_state',
                  detail = 'Re-running it now would reverse the order of the user''s requests.',
                  hint = 'A failed request is retried only while no later request of the same user has succeeded or is pending or running.';
    end if;
    update userhooks.subscription_requests
       set status = 'pending', attempts = 0, run_at = now(), locked_by = null,
           locked_until = null, finished_at = null, result = null, updated_at = now()
     where id = failed.id;
    perform pg_notify('userhooks_requests', '');
    return true;
end
$$;

comment on function userhooks.retry(bigint) is
    'Re-queues a failed request with a fresh attempt budget: true if re-queued, false if it is not failed. Raises when a later request of the same user succeeded or is pending or running (insert a new request instead), or when its secret was erased.';

create function userhooks.refuse_far_run_at() returns trigger
    language plpgsql
    set search_path = pg_catalog, pg_temp
as $$
begin
    raise exception 'run_at % is more than 30 days ahead: the request would hold back every later request of user % until then',
            new.run_at, to_json(new.user_id)::text
        using errcode = 'check_violation',
              schema = 'userhooks',
              table = 'subscription_requests',
              column = 'run_at',
              constraint = 'subscription_requests_run_at_horizon_check',
              hint = 'Insert the request within 30 days of when it should run, or leave run_at at its default (now).';
end
$$;

comment on function userhooks.refuse_far_run_at() is
    'Refuses a request scheduled more than 30 days ahead, as a check violation.';

-- BEFORE triggers, not a CHECK: Postgres evaluates every CHECK on every UPDATE (the worker
-- updates each request twice), and a CHECK with now() would also judge rows that were valid
-- when written. The conditions call only pg_catalog, so an INSERT needs no EXECUTE grant
-- (the 30 days are written out in both for that reason). Named to fire before the scrub
-- trigger, like the options check.
create trigger subscription_requests_check_run_at
    before insert on userhooks.subscription_requests
    for each row
    when (new.run_at > pg_catalog.now() + interval '30 days')
    execute function userhooks.refuse_far_run_at();

create trigger subscription_requests_check_run_at_change
    before update of run_at on userhooks.subscription_requests
    for each row
    when (new.run_at > pg_catalog.now() + interval '30 days'
          and new.run_at is distinct from old.run_at)
    execute function userhooks.refuse_far_run_at();
