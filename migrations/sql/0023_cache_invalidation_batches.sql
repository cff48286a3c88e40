-- One invalidation intent per projection batch (its keys and versions as arrays) instead of
-- one row per key: a campaign call wrote ~10 intent rows, each inserted then deleted, about
-- 8 % of the call's WAL. Intents left from before become one-key batches.
ALTER TABLE cache_invalidations ADD COLUMN keys text[], ADD COLUMN versions bigint[];
UPDATE cache_invalidations SET keys = ARRAY[key], versions = ARRAY[version];
ALTER TABLE cache_invalidations
    DROP COLUMN key,
    DROP COLUMN version,
    ALTER COLUMN keys SET NOT NULL,
    ALTER COLUMN versions SET NOT NULL;
