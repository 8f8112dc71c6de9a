-- GET /v1/stock pages levels by (location, sku): one index walk per page instead of a sort of every
-- level of the location. It also serves everything the location-only index served.
CREATE INDEX stock_levels_by_location_sku ON inventory.stock_levels (location_id, sku);
DROP INDEX inventory.stock_levels_location;
