-- Where the last `availability.*` event the projection published stands (txid, id), moved by the
-- statement that publishes (services/ecommerce/repository.py SAVE_BATCH). The process that wrote a
-- batch hands its events to its own streams right after the commit, before every older transaction has
-- ended and the outbox lets readers see them (shared/event_stream.py, the express lane); a hub takes them
-- only when they follow, without a gap, the last availability event it holds. SAVE_BATCH also refuses a
-- writer whose transaction id is below the last publisher's, so these events' positions grow in commit
-- order and nothing published later can sort before what a stream already sent.
ALTER TABLE ecommerce.cursors ADD COLUMN published_txid bigint NOT NULL DEFAULT 0,
                              ADD COLUMN published_id bigint NOT NULL DEFAULT 0;
