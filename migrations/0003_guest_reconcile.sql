-- lifecycled journal, schema version 3: what reconcile needs on the guests table.
--
-- Config drift (SPEC §3): `config_digest` is the digest of the snapshot taken when the guest
-- became managed (or re-baselined after lifecycled's own config change, `snapshot_at`);
-- `observed_digest` is the digest the last config read returned (`digest_checked_at`).
-- A managed guest drifts when both are set and differ. Drift is reported, never corrected.
ALTER TABLE guests ADD COLUMN observed_digest TEXT;
ALTER TABLE guests ADD COLUMN digest_checked_at REAL;
ALTER TABLE guests ADD COLUMN snapshot_at REAL;
-- Whether the guest is a template (never acted on by reconcile).
ALTER TABLE guests ADD COLUMN template INTEGER NOT NULL DEFAULT 0 CHECK (template IN (0, 1));

-- Listings and gauges by observed state (LOST guests, drift).
CREATE INDEX guests_by_observed ON guests (observed_state, vmid);
-- The latest reconcile op of a guest (its idempotency key carries the desired generation).
CREATE INDEX ops_reconcile_by_vmid ON ops (vmid, id) WHERE origin = 'reconcile';
