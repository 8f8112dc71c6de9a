-- A key may stand for one person: the console issues each signed-in person a short-lived key of their
-- own (services/console/), so every change the services record names who made it. NULL: a machine's
-- key (tills, the shop, tools), named by its id as before.
ALTER TABLE core.api_keys ADD COLUMN person text
    CHECK (person IS NULL OR person ~ '^[a-z0-9][a-z0-9._-]{1,63}$');
