-- lifecycled journal, schema version 7: `phase` is derived from `state`, never written.
--
-- `phase` (0 = terminal, 1 = pending, 2 = in flight) exists for the tiny partial indexes
-- of the hot paths (reference/sqlite-performance.md §5). Until now the journal wrote it
-- beside `state` by hand; it is now a VIRTUAL generated column, so it cannot disagree with
-- `state`. The indexes that read it are dropped first (SQLite will not drop an indexed
-- column) and created again, unchanged, on the generated column.
DROP INDEX ops_due;
DROP INDEX ops_inflight_vmid;
DROP INDEX ops_inflight_node;
DROP INDEX ops_closed;
ALTER TABLE ops DROP COLUMN phase;
ALTER TABLE ops ADD COLUMN phase INTEGER GENERATED ALWAYS AS (
    CASE state WHEN 'pending' THEN 1 WHEN 'dispatching' THEN 2 WHEN 'running' THEN 2 ELSE 0 END
) VIRTUAL;
CREATE INDEX ops_due ON ops (due_at) WHERE phase = 1;
CREATE INDEX ops_inflight_vmid ON ops (vmid) WHERE phase = 2;
CREATE INDEX ops_inflight_node ON ops (node, updated_at) WHERE phase = 2;
CREATE INDEX ops_closed ON ops (finished_at) WHERE phase = 0;
