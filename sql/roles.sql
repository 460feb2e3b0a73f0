-- Least-privilege roles for userhooks. Apply after the migrations, as the owner of schema
-- `userhooks` (the role that ran `userhooks migrate`) holding CREATEROLE, or as a superuser:
--
--     userhooks migrate --roles          # migrations, then this file (embedded in the binary)
--     psql "$DATABASE_URL" -f sql/roles.sql
--
-- Safe to run twice, and from two sessions at once. Roles are cluster-wide, privileges are
-- per database: run it in every database that has a `userhooks` schema.
--
-- Both roles are NOLOGIN groups. Give each real login its own role and make it a member:
--
--     create role orders_app login password '...' in role userhooks_app;
--     create role userhooks_worker_1 login password '...' in role userhooks_worker;
--     -- or, for an existing role:  grant userhooks_app to orders_app;
--
-- Members inherit the privileges (the default INHERIT). Neither role owns anything, so
-- neither can run DDL on the userhooks schema: `userhooks migrate` stays with the owner.
--
-- userhooks_app    enqueue requests and read their outcome, nothing else:
--                  INSERT (request columns only) and SELECT on subscription_requests,
--                  SELECT on queue_summary, EXECUTE on subscribe/unsubscribe/backfill/retry
--                  (and on the options check the request table's trigger calls).
--                  No UPDATE or DELETE on requests; no access at all to webhook_subscriptions,
--                  backfills or schema_migrations.
-- userhooks_worker what the worker and the operator commands need: SELECT/INSERT/UPDATE/DELETE
--                  on the three tables, SELECT on schema_migrations and queue_summary,
--                  EXECUTE on the helpers. No CREATE on the schema, owns nothing.

do $$
declare
    name text;
begin
    foreach name in array array['userhooks_app', 'userhooks_worker'] loop
        if not exists (select 1 from pg_catalog.pg_roles where rolname = name) then
            begin
                execute format('create role %I nologin', name);
            exception
                -- Another session created it between our check and our CREATE.
                when duplicate_object or unique_violation then null;
            end;
        end if;
    end loop;
end
$$;

-- Start from nothing, so running this file again after a change also takes privileges away.
revoke all on schema userhooks from userhooks_app, userhooks_worker;
revoke all on all tables in schema userhooks from userhooks_app, userhooks_worker;
revoke all on all sequences in schema userhooks from userhooks_app, userhooks_worker;
revoke all on all functions in schema userhooks from userhooks_app, userhooks_worker;

-- The helpers are SECURITY DEFINER: nobody but the two roles (and the owner) may call them.
-- Postgres grants EXECUTE to PUBLIC by default.
revoke execute on function
    userhooks.subscribe(text, text, jsonb),
    userhooks.unsubscribe(text, text),
    userhooks.backfill(text, text),
    userhooks.retry(bigint)
    from public;

-- userhooks_app ------------------------------------------------------------------------------

grant usage on schema userhooks to userhooks_app;
-- Only the columns a request is made of: the app cannot forge a status, a lease or a result.
grant insert (action, user_id, webhook_url, subscription_id, options, max_attempts, run_at)
    on userhooks.subscription_requests to userhooks_app;
grant select on userhooks.subscription_requests, userhooks.queue_summary to userhooks_app;
-- The request table's trigger calls it to check `options`; granted explicitly so that an
-- INSERT still works where EXECUTE was revoked from PUBLIC as hardening.
grant execute on function userhooks.request_options_violation(jsonb)
    to userhooks_app, userhooks_worker;
grant execute on function
    userhooks.subscribe(text, text, jsonb),
    userhooks.unsubscribe(text, text),
    userhooks.backfill(text, text),
    userhooks.retry(bigint)
    to userhooks_app;

-- userhooks_worker ---------------------------------------------------------------------------

grant usage on schema userhooks to userhooks_worker;
grant select, insert, update, delete
    on userhooks.subscription_requests, userhooks.webhook_subscriptions, userhooks.backfills
    to userhooks_worker;
grant select on userhooks.schema_migrations, userhooks.queue_summary to userhooks_worker;
grant execute on function
    userhooks.subscribe(text, text, jsonb),
    userhooks.unsubscribe(text, text),
    userhooks.backfill(text, text),
    userhooks.retry(bigint)
    to userhooks_worker;
