-- lifecycled journal, schema version 1.
--
-- Applied by lifecycled/journal/migrations.py inside one transaction that also sets
-- PRAGMA user_version. One statement per line-terminated `;` (triggers may span lines).
-- Timestamps are epoch seconds (REAL). JSON columns hold canonical JSON text.
-- Never edit an applied migration: add 0002_….sql instead.

-- Marks the file as a lifecycled journal ("LCYD"); checked on open.
PRAGMA application_id = 1279482180;

-- Ops: one lifecycle command each (SPEC §1 "Op").
--
-- `phase` is a small integer state code kept in step with `state` by the journal:
--   0 = terminal, 1 = pending, 2 = in flight (dispatching/running).
-- It exists so the hot-path indexes below can be tiny PARTIAL indexes with a cheap
-- predicate (reference/sqlite-performance.md §5). Queries must repeat `phase = N`
-- literally or the planner will not use them.
--
-- `due_at` is when a pending op may be claimed: next_attempt_at when a retry is
-- scheduled, else the time it became pending. Claim order is (due_at, id), so retries
-- are not starved by a stream of fresh submissions.
CREATE TABLE ops (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused: clients hold op ids
    idempotency_key  TEXT    NOT NULL UNIQUE,
    action           TEXT    NOT NULL,
    node             TEXT    NOT NULL,
    kind             TEXT    NOT NULL CHECK (kind IN ('qemu', 'lxc')),
    vmid             INTEGER NOT NULL,
    params           TEXT    NOT NULL DEFAULT '{}' CHECK (json_valid(params)),
    origin           TEXT    NOT NULL,
    actor            TEXT    NOT NULL DEFAULT 'api',
    state            TEXT    NOT NULL CHECK (state IN ('pending', 'dispatching', 'running',
                                         'succeeded', 'failed', 'dead_lettered', 'cancelled')),
    phase            INTEGER NOT NULL CHECK (phase IN (0, 1, 2)),
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  REAL,
    due_at           REAL    NOT NULL,
    upid             TEXT,
    exitstatus       TEXT,
    error_class      TEXT,
    error_message    TEXT,
    created_at       REAL    NOT NULL,
    updated_at       REAL    NOT NULL,
    finished_at      REAL,
    claimed_at       REAL,
    ambiguous_since  REAL,
    dispatched       INTEGER NOT NULL DEFAULT 0 CHECK (dispatched IN (0, 1)),
    discarded_at     REAL    -- a dead letter an operator discarded (left the DLQ listing)
);

-- Claim: due pending ops in (due_at, id) order.
CREATE INDEX ops_due ON ops (due_at) WHERE phase = 1;
-- One in-flight op per guest.
CREATE INDEX ops_inflight_vmid ON ops (vmid) WHERE phase = 2;
-- Per-node in-flight cap, in_flight(node=…), stale_in_flight.
CREATE INDEX ops_inflight_node ON ops (node, updated_at) WHERE phase = 2;
-- Prune: terminal ops by finish time.
CREATE INDEX ops_closed ON ops (finished_at) WHERE phase = 0;
-- Listings, newest first with an id cursor.
CREATE INDEX ops_by_vmid ON ops (vmid, id);
CREATE INDEX ops_by_state ON ops (state, id);
CREATE INDEX ops_by_action ON ops (action, id);
-- Dead-letter queue listing (not discarded).
CREATE INDEX ops_dead_letters ON ops (id) WHERE state = 'dead_lettered' AND discarded_at IS NULL;

-- Every transition of every op, appended in the same transaction as the change.
CREATE TABLE op_history (
    id             INTEGER PRIMARY KEY,
    op_id          INTEGER NOT NULL REFERENCES ops (id) ON DELETE CASCADE,
    at             REAL    NOT NULL,
    from_state     TEXT,
    to_state       TEXT    NOT NULL,
    reason         TEXT    NOT NULL,
    attempt        INTEGER NOT NULL DEFAULT 0,
    upid           TEXT,
    error_class    TEXT,
    error_message  TEXT
);
CREATE INDEX op_history_op ON op_history (op_id, id);

-- Guests lifecycled knows about: managed (native, adopted), discovered, released.
CREATE TABLE guests (
    vmid                INTEGER PRIMARY KEY,
    node                TEXT    NOT NULL,
    kind                TEXT    NOT NULL CHECK (kind IN ('qemu', 'lxc')),
    origin              TEXT    NOT NULL
                        CHECK (origin IN ('native', 'adopted', 'discovered', 'released')),
    name                TEXT,
    desired_state       TEXT    CHECK (desired_state IN ('running', 'stopped', 'absent')),
    desired_generation  INTEGER NOT NULL DEFAULT 0,
    desired_config      TEXT    CHECK (desired_config IS NULL OR json_valid(desired_config)),
    observed_state      TEXT,
    observed_at         REAL,
    lock                TEXT,
    ha_managed          INTEGER NOT NULL DEFAULT 0 CHECK (ha_managed IN (0, 1)),
    protected           INTEGER NOT NULL DEFAULT 0 CHECK (protected IN (0, 1)),
    fingerprint         TEXT    CHECK (fingerprint IS NULL OR json_valid(fingerprint)),
    config_snapshot     TEXT    CHECK (config_snapshot IS NULL OR json_valid(config_snapshot)),
    config_digest       TEXT,
    resources           TEXT    CHECK (resources IS NULL OR json_valid(resources)),
    created_at          REAL    NOT NULL,
    updated_at          REAL    NOT NULL,
    adopted_at          REAL,
    released_at         REAL,
    lost_at             REAL
);
CREATE INDEX guests_by_node ON guests (node, vmid);
CREATE INDEX guests_by_origin ON guests (origin, vmid);

-- Append-only audit log of destructive decisions (SPEC §4).
CREATE TABLE audit (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    at        REAL    NOT NULL,
    actor     TEXT    NOT NULL,
    action    TEXT    NOT NULL,
    decision  TEXT    NOT NULL,
    vmid      INTEGER,
    node      TEXT,
    reason    TEXT    NOT NULL DEFAULT '',
    snapshot  TEXT    CHECK (snapshot IS NULL OR json_valid(snapshot))
);
CREATE INDEX audit_by_vmid ON audit (vmid, id);
CREATE INDEX audit_by_action ON audit (action, id);
CREATE INDEX audit_by_decision ON audit (decision, id);
CREATE INDEX audit_by_at ON audit (at);

CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
BEGIN
    SELECT RAISE(ABORT, 'audit is append-only');
END;

CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
BEGIN
    SELECT RAISE(ABORT, 'audit is append-only');
END;

-- Nonces of signed destructive requests: a replay is refused even after a restart.
CREATE TABLE nonces (
    nonce       TEXT NOT NULL PRIMARY KEY,
    key_id      TEXT NOT NULL,
    seen_at     REAL NOT NULL,
    expires_at  REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX nonces_expiry ON nonces (expires_at);

-- Durable outbox of push events (SPEC §5 "Push"): at least once, ordered per guest.
CREATE TABLE outbox (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    vmid        INTEGER,
    kind        TEXT    NOT NULL,
    payload     TEXT    NOT NULL CHECK (json_valid(payload)),
    created_at  REAL    NOT NULL,
    sent_at     REAL,
    attempts    INTEGER NOT NULL DEFAULT 0
);
-- Unsent events in order; queries repeat `sent_at IS NULL`.
CREATE INDEX outbox_unsent ON outbox (seq) WHERE sent_at IS NULL;

-- Lifecycle state of the nodes a sidecar serves (SPEC §4).
CREATE TABLE node_state (
    node        TEXT    NOT NULL PRIMARY KEY,
    state       TEXT    NOT NULL CHECK (state IN ('ready', 'active', 'idle', 'draining',
                                                  'decommissioned', 'unhealthy')),
    since       REAL    NOT NULL,
    is_system   INTEGER NOT NULL DEFAULT 0 CHECK (is_system IN (0, 1)),
    first_seen  REAL    NOT NULL,
    reason      TEXT    NOT NULL DEFAULT ''
);
