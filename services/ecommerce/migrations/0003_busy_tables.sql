-- The delivery queue is a hot, fast-turning table: the claim of due deliveries must read them in
-- (next_attempt_at, id) order and stop at its batch size instead of sorting the whole backlog.
-- On next_attempt_at alone every row of one fan-out shares the same now(), so the whole backlog was
-- read and sorted on each claim (16 ms at 6,000 pending rows; 2 ms with the id in the index).
DROP INDEX ecommerce.webhook_deliveries_due;
CREATE INDEX webhook_deliveries_due ON ecommerce.webhook_deliveries (next_attempt_at, id)
    WHERE status IN ('pending', 'sending');

-- Every delivery is updated two or three times in its first seconds and then never again: vacuum and
-- analyze it after 1 % of change, not the default 20 %. Stale statistics (a few rows, where thousands
-- wait) made the planner sort the backlog instead of reading the index above, and the dead versions
-- of sent rows lengthened every scan of the queue.
ALTER TABLE ecommerce.webhook_deliveries SET (
    autovacuum_vacuum_scale_factor = 0.01, autovacuum_vacuum_threshold = 1000,
    autovacuum_analyze_scale_factor = 0.01, autovacuum_analyze_threshold = 1000
);

-- The mirrored levels change on every stock change the channel follows. Room on each page keeps those
-- updates HOT (same page, no index entries) and a SKU's rows together as the rebuild wrote them (in
-- (sku, location) order): ship sums then read a page or two per SKU instead of one page per level.
ALTER TABLE ecommerce.levels SET (fillfactor = 70);
