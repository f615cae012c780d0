//! Payments and dunning: a payment settles its invoice (a second notification of the same payment
//! changes nothing); a failed one makes the subscription past due until the grace period runs out.

use super::*;

pub(super) async fn record_payment(
    s: &mut Subscription,
    payment_id: String,
    invoice_id: Uuid,
    outcome: PaymentOutcome,
    at: DateTime<Utc>,
    sink: &Sink,
) -> Outcome {
    // A notification seen before for an invoice still unpaid changes nothing; one for an invoice
    // no longer unpaid changes nothing below.
    if s.payments_pending.values().any(|seen| seen.contains(&payment_id)) {
        return Ok(());
    }
    let subscription_id = s.id.expect("started");
    let Some(&total) = s.unpaid.get(&invoice_id) else {
        let ours = (1..=s.invoices_issued).any(|n| self::invoice_id(subscription_id, n) == invoice_id);
        // A notification about an invoice that is already paid changes nothing.
        return if ours { Ok(()) } else { Err(SubscriptionError::InvoiceNotFound) };
    };
    match outcome {
        PaymentOutcome::Succeeded { amount, currency, offline } => {
            if amount != total || currency != s.currency {
                return Err(SubscriptionError::PaymentMismatch {
                    expected: total,
                    expected_currency: s.currency.clone(),
                    paid: amount,
                    currency,
                });
            }
            let (method, reference) = offline.map_or((None, None), |(method, reference)| (Some(method), reference));
            sink.write(E::PaymentSucceeded { payment_id, invoice_id, amount, paid_at: at, method, reference }, s).await;
            if matches!(s.status, S::PastDue | S::Suspended) && s.failed.is_empty() {
                sink.write(E::SubscriptionReactivated { reactivated_at: at }, s).await;
            }
        }
        PaymentOutcome::Failed => sink.write(E::PaymentFailed { payment_id, invoice_id, failed_at: at }, s).await,
    }
    Ok(())
}
