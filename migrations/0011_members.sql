-- Members (seats), checked and written atomically with the append, like bookings (0003).
--
-- Seats = invited + active members, counted in quota_counters (metric 'users', period
-- 'epoch'): an invitation claims one against the limit it carries (the plan's users plus the
-- subscription's extra users), a removal frees it. An e-mail is unique among a tenant's
-- members that are not removed: the invitation carries a digest keyed with the tenant's own
-- personal-data key (never the address), held here while the member is not removed.
CREATE TABLE member_emails (
    tenant_id uuid NOT NULL,
    email_key text NOT NULL,
    member_id uuid NOT NULL UNIQUE,
    PRIMARY KEY (tenant_id, email_key)
);

CREATE FUNCTION apply_member_event() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    p jsonb := NEW.payload;
    tenant uuid := (p ->> 'tenant_id')::uuid;
    member uuid := NEW.aggregate_id::uuid;
BEGIN
    IF NEW.event_type = 'MemberInvited' THEN
        BEGIN
            INSERT INTO member_emails (tenant_id, email_key, member_id) VALUES (tenant, p ->> 'email_key', member);
        EXCEPTION WHEN unique_violation THEN
            RAISE EXCEPTION 'a member with this e-mail exists already'
                USING ERRCODE = 'SL409', DETAIL = json_build_object('code', 'CONFLICT', 'field', 'email')::text;
        END;
        PERFORM claim_quota(tenant, 'users', 'epoch'::timestamptz, (p ->> 'seat_limit')::bigint);
    ELSIF NEW.event_type = 'MemberRemoved' THEN
        DELETE FROM member_emails WHERE member_id = member;
        UPDATE quota_counters SET used = used - 1 WHERE tenant_id = tenant AND metric = 'users' AND period_start = 'epoch' AND used > 0;
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER events_apply_member
    AFTER INSERT ON events
    FOR EACH ROW
    WHEN (NEW.aggregate_type = 'Member')
    EXECUTE FUNCTION apply_member_event();
