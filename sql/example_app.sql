-- The example application schema from Sequin's user-specific webhooks tutorial.
-- userhooks does not need it; the demo, the notification generator and docker-compose use it.
-- Safe to run more than once.

create table if not exists public.users (
    id   serial primary key,
    name text not null
);

create table if not exists public.notifications (
    id         serial primary key,
    user_id    int references public.users (id) on delete cascade,
    message    text not null,
    created_at timestamptz default now()
);

-- Deletes carry only the primary key unless the full old row is logged; Sequin's per-user
-- filter reads user_id, so without this users would never receive their deletes.
alter table public.notifications replica identity full;
