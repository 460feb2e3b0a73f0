-- Refuse at the INSERT what would stall the queue for everybody.
--
-- The worker decodes `options` into serde_json values when it claims a batch. serde_json
-- refuses documents nested deeper than 128 levels and numbers beyond the f64 range (1e400),
-- both of which jsonb accepts; such a row made the claim statement succeed and its decoding
-- fail, for the whole batch, at every poll. And a pending row with `run_at = 'infinity'`
-- made the claim statement itself fail ("cannot subtract infinite timestamps") for every
-- request of every user.
--
-- Limits (documented in the README): options nest at most 32 levels (the options in use need
-- 3), numbers in options lie within ±1e308, run_at is a finite time.

-- Requests already queued that break the limits: fail them with the reason, so the new
-- constraints can hold for every row the worker will ever claim.
update userhooks.subscription_requests
   set status = 'failed',
       last_error = 'options nest deeper than 32 levels, hold a number beyond ±1e308, or run_at is not a finite time',
       result = jsonb_build_object('error', jsonb_build_object(
                    'kind', 'invalid_request',
                    'summary', 'options nest deeper than 32 levels, hold a number beyond ±1e308, or run_at is not a finite time')),
       locked_by = null, locked_until = null, finished_at = now(), updated_at = now()
 where status in ('pending', 'running')
   and (jsonb_path_exists(options, 'strict $.**{33 to last}')
        or jsonb_path_exists(options, 'strict $.** ? (@.type() == "number" && (@ > 1e308 || @ < -1e308))')
        or not isfinite(run_at));

-- NOT VALID: finished rows are never decoded again and need not be rewritten; every new or
-- updated row is checked.
alter table userhooks.subscription_requests
    add constraint subscription_requests_options_depth_check
        check (not jsonb_path_exists(options, 'strict $.**{33 to last}')) not valid,
    add constraint subscription_requests_options_numbers_check
        check (not jsonb_path_exists(
                   options, 'strict $.** ? (@.type() == "number" && (@ > 1e308 || @ < -1e308))'))
        not valid,
    add constraint subscription_requests_run_at_finite_check
        check (isfinite(run_at)) not valid;
