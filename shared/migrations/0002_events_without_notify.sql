-- A NOTIFY inside a writing transaction takes a cluster-wide lock at pre-commit and holds it through
-- the commit's WAL flush, so every transaction that notifies commits one at a time: measured here,
-- 456 event-writing commits/s with the trigger against 5,062/s without. Readers poll the outbox by
-- position instead (shared/event_stream.py), which loses nothing and costs one indexed query per
-- poll per process.
DROP TRIGGER events_notify ON core.events;
DROP FUNCTION core.notify_events();
