-- The booking context stamp (0017) moves only for the events that change what a booking is
-- decided on. Of a subscription's events, only `SubscriptionStarted`, `PlanChanged` and
-- `AddonsChanged` change its plan (limits) or add-ons (`domain::subscription` `apply`); a
-- renewal's `PeriodStarted`, `InvoiceIssued` and `UsageBilled`, payments, credit and the rest
-- do not, and bumping the stamp for each of them was an upsert per event inside the append that
-- holds the log head's lock (three per renewal on a billing day). Every Resource event still
-- counts. A new Subscription event that changes plan or add-ons must be added here.
DROP TRIGGER events_stamp_booking_context ON events;
CREATE TRIGGER events_stamp_booking_context
    AFTER INSERT ON events
    FOR EACH ROW
    WHEN (NEW.aggregate_type = 'Resource'
          OR (NEW.aggregate_type = 'Subscription' AND NEW.event_type IN ('SubscriptionStarted', 'PlanChanged', 'AddonsChanged')))
    EXECUTE FUNCTION stamp_booking_context();

DROP TRIGGER events_stamp_booking_context_numbered ON events;
CREATE TRIGGER events_stamp_booking_context_numbered
    AFTER UPDATE OF position ON events
    FOR EACH ROW
    WHEN (OLD.position IS NULL AND NEW.position IS NOT NULL
          AND (NEW.aggregate_type = 'Resource'
               OR (NEW.aggregate_type = 'Subscription' AND NEW.event_type IN ('SubscriptionStarted', 'PlanChanged', 'AddonsChanged'))))
    EXECUTE FUNCTION stamp_booking_context_numbered();
