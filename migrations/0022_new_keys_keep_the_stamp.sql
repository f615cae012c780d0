-- A tenant's first key no longer moves its booking context stamp (0017); its erasure still does.
-- A booking context read before the tenant had a key row is never kept (`settled AND
-- has_key_row`, commands/src/bookings.rs), and the booking decided on it seals with the key the
-- row then holds (made, or read if another request made it first), so the key's arrival changes
-- nothing a booking was decided on. Bumping the stamp for it was an upsert and a trigger call in
-- every sign-up. A row inserted already erased (a tenant erased before it ever had a key) and
-- every update or delete (erasure, removal) still move it.
DROP TRIGGER personal_data_keys_stamp_booking_context ON personal_data_keys;

CREATE TRIGGER personal_data_keys_stamp_booking_context
    AFTER UPDATE OR DELETE ON personal_data_keys
    FOR EACH ROW
    EXECUTE FUNCTION stamp_booking_key();

CREATE TRIGGER personal_data_keys_stamp_booking_context_erased
    AFTER INSERT ON personal_data_keys
    FOR EACH ROW
    WHEN (NEW.key IS NULL)
    EXECUTE FUNCTION stamp_booking_key();
