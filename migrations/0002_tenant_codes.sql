-- Tenant codes are unique across the platform, also under concurrent creation.
--
-- The claim is made by a trigger in the very transaction that appends `TenantCreated`, so the
-- check and the write are one atomic step: of N concurrent creations with one code exactly one
-- commits. The loser's whole append rolls back with SQLSTATE SL409, which the command layer
-- turns into a 409 (commands/src/rejection.rs).
CREATE TABLE tenant_codes (
    code      text PRIMARY KEY,
    tenant_id uuid NOT NULL UNIQUE
);

CREATE FUNCTION claim_tenant_code() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO tenant_codes (code, tenant_id)
    VALUES (NEW.payload ->> 'code', NEW.aggregate_id::uuid)
    ON CONFLICT (code) DO NOTHING;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'tenant code "%" is already taken', NEW.payload ->> 'code'
            USING ERRCODE = 'SL409',
                  DETAIL = json_build_object('code', 'CONFLICT', 'field', 'code')::text;
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER events_claim_tenant_code
    AFTER INSERT ON events
    FOR EACH ROW
    WHEN (NEW.aggregate_type = 'Tenant' AND NEW.event_type = 'TenantCreated')
    EXECUTE FUNCTION claim_tenant_code();
