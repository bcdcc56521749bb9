-- lifecycled journal, schema version 5: the outbox only while push is on; audit retention.
--
-- `journal_flags` holds switches the triggers consult (one row per name, present = on).
--
-- `push`: the daemon sets it at start when --notify-url is configured and removes it when not.
-- The outbox triggers (0002) now write an event only while it is set, so a journal without
-- push never grows an outbox; with push on, the event is still written in the same
-- transaction as its change (at least once, ordered).
--
-- `audit_prune_before`: the audit log stays append-only, except that `lifecycled audit prune`
-- may delete records older than this cutoff inside its own transaction (which sets the flag,
-- deletes, audits the prune itself and removes the flag again).
CREATE TABLE journal_flags (
    name  TEXT PRIMARY KEY,
    value REAL NOT NULL DEFAULT 1
) WITHOUT ROWID;

DROP TRIGGER audit_no_delete;
CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
WHEN OLD.at >= COALESCE((SELECT value FROM journal_flags WHERE name = 'audit_prune_before'), -1)
BEGIN
    SELECT RAISE(ABORT, 'audit is append-only (lifecycled audit prune removes old records)');
END;

DROP TRIGGER outbox_op_terminal;
CREATE TRIGGER outbox_op_terminal AFTER UPDATE OF state ON ops
WHEN EXISTS (SELECT 1 FROM journal_flags WHERE name = 'push')
  AND (NEW.state IN ('succeeded', 'failed', 'dead_lettered', 'cancelled') AND OLD.state IS NOT NEW.state)
BEGIN
    INSERT INTO outbox (vmid, kind, payload, created_at)
    VALUES (NEW.vmid, 'op.' || NEW.state,
            json_object('op_id', NEW.id, 'idempotency_key', NEW.idempotency_key,
                        'action', NEW.action, 'node', NEW.node, 'kind', NEW.kind,
                        'vmid', NEW.vmid, 'state', NEW.state, 'attempts', NEW.attempts,
                        'upid', NEW.upid, 'exitstatus', NEW.exitstatus,
                        'error_class', NEW.error_class, 'error_message', NEW.error_message,
                        'origin', NEW.origin, 'finished_at', NEW.finished_at),
            NEW.updated_at);
END;

DROP TRIGGER outbox_guest_appeared;
CREATE TRIGGER outbox_guest_appeared AFTER INSERT ON guests
WHEN EXISTS (SELECT 1 FROM journal_flags WHERE name = 'push')
BEGIN
    INSERT INTO outbox (vmid, kind, payload, created_at)
    VALUES (NEW.vmid, 'guest.appeared',
            json_object('vmid', NEW.vmid, 'node', NEW.node, 'kind', NEW.kind,
                        'origin', NEW.origin, 'name', NEW.name,
                        'observed_state', NEW.observed_state, 'desired_state', NEW.desired_state),
            NEW.updated_at);
END;

DROP TRIGGER outbox_guest_changed;
CREATE TRIGGER outbox_guest_changed AFTER UPDATE OF observed_state, node ON guests
WHEN EXISTS (SELECT 1 FROM journal_flags WHERE name = 'push')
  AND (OLD.observed_state IS NOT NEW.observed_state OR OLD.node IS NOT NEW.node)
BEGIN
    INSERT INTO outbox (vmid, kind, payload, created_at)
    VALUES (NEW.vmid,
            CASE WHEN NEW.observed_state = 'LOST' THEN 'guest.lost'
                 WHEN NEW.observed_state = 'missing' THEN 'guest.gone'
                 ELSE 'guest.changed' END,
            json_object('vmid', NEW.vmid, 'node', NEW.node, 'kind', NEW.kind,
                        'origin', NEW.origin, 'observed_state', NEW.observed_state,
                        'previous_state', OLD.observed_state, 'previous_node', OLD.node,
                        'desired_state', NEW.desired_state),
            NEW.updated_at);
END;

DROP TRIGGER outbox_guest_origin;
CREATE TRIGGER outbox_guest_origin AFTER UPDATE OF origin ON guests
WHEN EXISTS (SELECT 1 FROM journal_flags WHERE name = 'push')
  AND (OLD.origin IS NOT NEW.origin)
BEGIN
    INSERT INTO outbox (vmid, kind, payload, created_at)
    VALUES (NEW.vmid,
            CASE NEW.origin WHEN 'native' THEN 'guest.managed'
                            WHEN 'adopted' THEN 'guest.adopted'
                            WHEN 'released' THEN 'guest.released'
                            ELSE 'guest.discovered' END,
            json_object('vmid', NEW.vmid, 'node', NEW.node, 'kind', NEW.kind,
                        'origin', NEW.origin, 'previous_origin', OLD.origin,
                        'observed_state', NEW.observed_state),
            NEW.updated_at);
END;

DROP TRIGGER outbox_guest_deleted;
CREATE TRIGGER outbox_guest_deleted AFTER DELETE ON guests
WHEN EXISTS (SELECT 1 FROM journal_flags WHERE name = 'push')
BEGIN
    INSERT INTO outbox (vmid, kind, payload, created_at)
    VALUES (OLD.vmid, 'guest.gone',
            json_object('vmid', OLD.vmid, 'node', OLD.node, 'kind', OLD.kind,
                        'origin', OLD.origin, 'observed_state', OLD.observed_state),
            OLD.updated_at);
END;
