-- lifecycled journal, schema version 4: a UPID belongs to one op.
--
-- Recover and the ambiguity search adopt a task found in a node's task list. Before this
-- version they could adopt a task another op had already recorded (two `configure` ops on
-- one guest: the second "succeeded" with the first one's UPID and its change was never
-- sent). The journal now refuses a second op with the same UPID, and the search looks the
-- found UPIDs up in both the ops and their history (a retried op's earlier task stays its
-- own).
--
-- A journal written by an older version may already hold such a duplicate: the later op
-- gives its UPID up (its history rows keep it, so it still counts as recorded).
UPDATE ops SET upid = NULL
WHERE upid IS NOT NULL
  AND id NOT IN (SELECT MIN(id) FROM ops WHERE upid IS NOT NULL GROUP BY upid);
CREATE UNIQUE INDEX ops_upid_unique ON ops (upid) WHERE upid IS NOT NULL;
-- "Which of these UPIDs has any op recorded?" (the adoption query).
CREATE INDEX op_history_upid ON op_history (upid) WHERE upid IS NOT NULL;
