-- Inbound shop orders, one row per (channel, external id): the claim that makes a replayed webhook
-- return the first result instead of placing the order again. Inserted in the same transaction as
-- the order itself, so a failed placement leaves no claim and the shop's retry can succeed.
CREATE TABLE ecommerce.shop_orders (
    channel      text NOT NULL,
    external_id  text NOT NULL,
    body_sha256  bytea NOT NULL,
    order_id     text,
    response     jsonb,
    received_at  timestamptz NOT NULL DEFAULT now(),
    replays      int NOT NULL DEFAULT 0,
    PRIMARY KEY (channel, external_id)
);
