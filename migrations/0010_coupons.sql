-- Coupon redemptions, counted atomically with the append that redeems one.
--
-- A coupon is its own aggregate and a redemption is a fact of the redeeming subscription
-- (`CouponApplied`), so "never more than max_redemptions" spans aggregates. The trigger below
-- counts each `CouponApplied` in the transaction that appends it: the guarded UPDATE takes the
-- coupon's row lock, so concurrent redemptions queue on it and exactly max_redemptions win;
-- the others abort their append with SL409 COUPON_NOT_APPLICABLE.
CREATE TABLE coupon_redemptions (
    code            text   PRIMARY KEY,
    redeemed        bigint NOT NULL DEFAULT 0 CHECK (redeemed >= 0),
    max_redemptions bigint CHECK (max_redemptions IS NULL OR redeemed <= max_redemptions)
);

CREATE FUNCTION apply_coupon_event() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    coupon_code text;
    used bigint;
    most bigint;
BEGIN
    IF NEW.aggregate_type = 'Coupon' AND NEW.event_type = 'CouponCreated' THEN
        INSERT INTO coupon_redemptions (code, max_redemptions)
        VALUES (NEW.payload -> 'terms' ->> 'code', (NEW.payload -> 'terms' ->> 'max_redemptions')::bigint)
        ON CONFLICT (code) DO NOTHING;
    ELSIF NEW.aggregate_type = 'Subscription' AND NEW.event_type = 'CouponApplied' THEN
        coupon_code := NEW.payload -> 'coupon' ->> 'code';
        UPDATE coupon_redemptions SET redeemed = redeemed + 1
        WHERE code = coupon_code AND (max_redemptions IS NULL OR redeemed < max_redemptions);
        IF NOT FOUND THEN
            SELECT redeemed, max_redemptions INTO used, most FROM coupon_redemptions WHERE code = coupon_code;
            RAISE EXCEPTION 'the coupon % has been redeemed % of % times', coupon_code, coalesce(used, 0), coalesce(most, 0)
                USING ERRCODE = 'SL409',
                      DETAIL = json_build_object('code', 'COUPON_NOT_APPLICABLE', 'coupon', coupon_code, 'reason', 'exhausted',
                                                 'max_redemptions', most, 'redeemed', used)::text;
        END IF;
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER events_apply_coupon
    AFTER INSERT ON events
    FOR EACH ROW
    WHEN ((NEW.aggregate_type = 'Coupon' AND NEW.event_type = 'CouponCreated')
          OR (NEW.aggregate_type = 'Subscription' AND NEW.event_type = 'CouponApplied'))
    EXECUTE FUNCTION apply_coupon_event();
