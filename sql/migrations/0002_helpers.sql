-- SQL helpers for applications and DBAs. They only enqueue (or re-queue) requests; the worker
-- does the work. SECURITY DEFINER with a fixed search_path so a least-privilege role can call
-- them without rights on the tables, and cannot hijack them with its own objects.

create function userhooks.subscribe(user_id text, webhook_url text, options jsonb default '{}')
    returns bigint
    language sql security definer
    set search_path = pg_catalog, pg_temp
as $$
    insert into userhooks.subscription_requests (action, user_id, webhook_url, options)
    values ('subscribe', subscribe.user_id, subscribe.webhook_url, coalesce(subscribe.options, '{}'))
    returning id
$$;

create function userhooks.unsubscribe(user_id text, webhook_url text default null)
    returns bigint
    language sql security definer
    set search_path = pg_catalog, pg_temp
as $$
    insert into userhooks.subscription_requests (action, user_id, webhook_url)
    values ('unsubscribe', unsubscribe.user_id, unsubscribe.webhook_url)
    returning id
$$;

create function userhooks.backfill(user_id text, webhook_url text default null)
    returns bigint
    language sql security definer
    set search_path = pg_catalog, pg_temp
as $$
    insert into userhooks.subscription_requests (action, user_id, webhook_url)
    values ('backfill', backfill.user_id, backfill.webhook_url)
    returning id
$$;

-- Re-queue a failed request with a fresh attempt budget. False when the request is not failed.
create function userhooks.retry(request_id bigint)
    returns boolean
    language sql security definer
    set search_path = pg_catalog, pg_temp
as $$
    with requeued as (
        update userhooks.subscription_requests
           set status = 'pending', attempts = 0, run_at = now(), locked_by = null,
               locked_until = null, finished_at = null, result = null, updated_at = now()
         where id = retry.request_id and status = 'failed'
        returning id
    ), woken as (
        select pg_notify('userhooks_requests', '') from requeued
    )
    select exists (select 1 from requeued) and (select count(*) from woken) >= 0
$$;

create view userhooks.queue_summary as
select action,
       status,
       count(*) as requests,
       extract(epoch from now() - min(created_at) filter (where status = 'pending'))::double precision
           as oldest_pending_age_seconds
  from userhooks.subscription_requests
 group by action, status;
