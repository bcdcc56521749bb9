-- lifecycled journal, schema version 6: the hand-off event of a cluster (SPEC §7).
--
-- A managed guest's node changed (a migration, ours or out of band, or a hand-off from the
-- shared record): `guest.moved` with the generation of its ownership record, so a control
-- plane can merge the streams of the sidecars of one cluster (both the source's and the
-- target's sidecar emit it; the generation orders them).
CREATE TRIGGER outbox_guest_moved AFTER UPDATE OF node ON guests
WHEN OLD.node IS NOT NEW.node AND NEW.origin IN ('native', 'adopted')
    AND EXISTS (SELECT 1 FROM journal_flags WHERE name = 'push')  -- the outbox only while pushing (0005)
BEGIN
    INSERT INTO outbox (vmid, kind, payload, created_at)
    VALUES (NEW.vmid, 'guest.moved',
            json_object('vmid', NEW.vmid, 'kind', NEW.kind, 'origin', NEW.origin,
                        'from_node', OLD.node, 'to_node', NEW.node,
                        'generation', NEW.desired_generation,
                        'desired_state', NEW.desired_state),
            NEW.updated_at);
END;
