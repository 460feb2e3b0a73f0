-- Check `options` only when it is written.
--
-- Postgres evaluates every CHECK constraint of a table on every UPDATE, whatever columns the
-- UPDATE sets. The three on `options` (its size as text, its depth, its numbers) serialize or
-- walk the whole document, and the worker updates each request twice (claim, write-back)
-- without ever touching `options`: work on every update for a column it never changes, the
-- more the larger the document (docs/performance.md). They now run in a BEFORE trigger on
-- INSERT and on UPDATE OF options only.
--
-- What a client sees is unchanged: the same SQLSTATE (23514, check_violation), the same
-- constraint names and message. `jsonb_typeof(options) = 'object'` is cheap and stays a
-- CHECK. Rows already stored were valid under the old constraints (or were failed by 0004),
-- so nothing needs re-checking.

-- The name of the limit `options` breaks, or null. A plain SQL expression, so Postgres
-- inlines it into the trigger's WHEN: the PL/pgSQL function below runs only to report a
-- violation. Every name is schema-qualified because an inlined function runs with the
-- caller's search_path.
create function userhooks.request_options_violation(options jsonb) returns text
    language sql immutable parallel safe
as $$
    select case
        when pg_catalog.octet_length(options::pg_catalog.text) > 16384
            then 'subscription_requests_options_check'
        when pg_catalog.jsonb_path_exists(options, 'strict $.**{33 to last}')
            then 'subscription_requests_options_depth_check'
        when pg_catalog.jsonb_path_exists(
                 options, 'strict $.** ? (@.type() == "number" && (@ > 1e308 || @ < -1e308))')
            then 'subscription_requests_options_numbers_check'
    end
$$;

create function userhooks.refuse_request_options() returns trigger
    language plpgsql
    set search_path = pg_catalog, pg_temp
as $$
declare
    broken text := userhooks.request_options_violation(new.options);
begin
    raise exception 'new row for relation "subscription_requests" violates check constraint "%"', broken
        using errcode = 'check_violation',
              schema = 'userhooks',
              table = 'subscription_requests',
              column = 'options',
              constraint = broken,
              hint = 'options: a JSON object of at most 16 KiB as text, nested at most 32 levels, numbers within ±1e308';
end
$$;

comment on function userhooks.refuse_request_options() is
    'Refuses a request whose options break the documented limits, as a check violation.';

-- Named to sort before subscription_requests_scrub_secret: BEFORE triggers fire in name
-- order, so the scrub sees only valid options.
create trigger subscription_requests_check_options
    before insert or update of options on userhooks.subscription_requests
    for each row
    when (userhooks.request_options_violation(new.options) is not null)
    execute function userhooks.refuse_request_options();

-- NOT VALID: every stored row passed the old `options_check`, which included this test; a
-- validating scan would hold the table's exclusive lock for as long as it reads every row.
alter table userhooks.subscription_requests
    drop constraint subscription_requests_options_depth_check,
    drop constraint subscription_requests_options_numbers_check,
    drop constraint subscription_requests_options_check,
    add constraint subscription_requests_options_check
        check (jsonb_typeof(options) = 'object') not valid;
