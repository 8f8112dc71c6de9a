-- The attempt that delivers a message is kept in its delivery row (last_started_at, last_duration_ms,
-- last_status_code) instead of a row of its own in webhook_attempts: nearly every delivery succeeds at
-- once, and its attempt row (an insert, two index entries and a foreign-key check) was a third of the
-- outcome writer's work under the order load. webhook_attempts keeps every attempt that did not
-- deliver; webhook_attempt_log is the whole log of every delivery, as before.
ALTER TABLE ecommerce.webhook_deliveries
    ADD COLUMN last_started_at timestamptz,
    ADD COLUMN last_duration_ms double precision;

CREATE VIEW ecommerce.webhook_attempt_log AS
SELECT delivery_id, attempt, started_at, duration_ms, status_code, error
FROM ecommerce.webhook_attempts
UNION ALL
-- Rows delivered before this migration have last_started_at null: their delivering attempt is logged above.
SELECT id, attempts, last_started_at, last_duration_ms, last_status_code, NULL
FROM ecommerce.webhook_deliveries
WHERE status = 'delivered' AND last_started_at IS NOT NULL;
