-- Opt-in batched delivery: a subscription with delivery = 'batch' receives many SKUs' changes in one
-- signed POST (event type availability.batch); 'each' keeps one request per change.
ALTER TABLE ecommerce.webhook_subscriptions
    ADD COLUMN delivery text NOT NULL DEFAULT 'each' CHECK (delivery IN ('each', 'batch'));
