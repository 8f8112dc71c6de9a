-- orders.place_batch runs the same dozen statements for every group with arrays of different lengths;
-- planning them anew per call (custom plans) cost ~0.3 ms a group, and every access is by primary key,
-- so generic plans are as good.
ALTER FUNCTION orders.place_batch SET plan_cache_mode = force_generic_plan;
