-- The worker's write-back sends its own `userhooks_request_done` notifications.
--
-- The row trigger from 0001 was a large share of the write-back's cost for every finished
-- request: the AFTER-trigger machinery (queue the event, fetch the row again, call PL/pgSQL)
-- and the PL/pgSQL `perform` (docs/performance.md). The write-back now calls pg_notify in its
-- RETURNING list, with the same payload, and first sets `userhooks.notifies_request_done` for
-- its transaction so that the trigger does not send them twice.
--
-- Every other update (a DBA's `update ... set status = 'cancelled'`, an older worker) leaves
-- the setting unset and still notifies through the trigger. Postgres folds identical
-- notifications of one transaction into one, so a client never sees a request twice either way.
drop trigger subscription_requests_done on userhooks.subscription_requests;

create trigger subscription_requests_done
    after update of status on userhooks.subscription_requests
    for each row
    when (new.status in ('succeeded', 'failed', 'cancelled')
          and old.status is distinct from new.status
          and pg_catalog.current_setting('userhooks.notifies_request_done', true)
              is distinct from 'on')
    execute function userhooks.notify_request_done();
