-- When the next pending message is due (the claim loop's sleep, services/ecommerce/webhook_repository.py
-- NEXT_DUE). On the unfinished index it walked past every leased ('sending') message first: 3.4 ms a
-- call, 30 calls a second, under the order load. Pending messages are few (retries and what waits
-- behind them), so their own index is a probe or two and costs nothing for the messages that leave at once.
CREATE INDEX webhook_deliveries_pending ON ecommerce.webhook_deliveries (next_attempt_at)
    WHERE status = 'pending';
