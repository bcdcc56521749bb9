-- lifecycled journal, schema version 2: push events written by triggers.

-- Push events (SPEC §5 "Push"): triggers write the durable outbox in the same transaction
-- as the change they describe, so no committed change can miss its event and no event can
-- describe a change that did not commit. `seq` orders events globally (hence per guest).

-- An op reached a terminal state.
CREATE TRIGGER outbox_op_terminal AFTER UPDATE OF state ON ops
WHEN NEW.state IN ('succeeded', 'failed', 'dead_lettered', 'cancelled') AND OLD.state IS NOT NEW.state
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

-- A guest row appeared (first seen, managed, adopted or created).
CREATE TRIGGER outbox_guest_appeared AFTER INSERT ON guests
BEGIN
    INSERT INTO outbox (vmid, kind, payload, created_at)
    VALUES (NEW.vmid, 'guest.appeared',
            json_object('vmid', NEW.vmid, 'node', NEW.node, 'kind', NEW.kind,
                        'origin', NEW.origin, 'name', NEW.name,
                        'observed_state', NEW.observed_state, 'desired_state', NEW.desired_state),
            NEW.updated_at);
END;

-- Its observed state or node changed (LOST and missing get their own event types).
CREATE TRIGGER outbox_guest_changed AFTER UPDATE OF observed_state, node ON guests
WHEN OLD.observed_state IS NOT NEW.observed_state OR OLD.node IS NOT NEW.node
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

-- Its ownership changed: managed (native), adopted, released, or back to discovered.
CREATE TRIGGER outbox_guest_origin AFTER UPDATE OF origin ON guests
WHEN OLD.origin IS NOT NEW.origin
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

-- Its row was removed from the journal.
CREATE TRIGGER outbox_guest_deleted AFTER DELETE ON guests
BEGIN
    INSERT INTO outbox (vmid, kind, payload, created_at)
    VALUES (OLD.vmid, 'guest.gone',
            json_object('vmid', OLD.vmid, 'node', OLD.node, 'kind', OLD.kind,
                        'origin', OLD.origin, 'observed_state', OLD.observed_state),
            OLD.updated_at);
END;
