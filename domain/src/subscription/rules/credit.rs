//! Account credit and credit notes: grants (with expiry), how much credit an invoice takes, and
//! credit notes against issued invoices (never more than the invoice's subtotal).

use super::*;

/// The credit applied to an invoice of `total` when `available` counts: never more than
/// either, never negative.
pub(crate) fn credit_to_apply(total: Decimal, available: Decimal) -> Decimal {
    total.min(available).max(Decimal::ZERO)
}

/// The largest single credit grant or credit note.
pub(super) const MAX_CREDIT: Decimal = Decimal::from_parts(1_000_000_000, 0, 0, false, 0);

/// `amount` as money: positive, at most two decimals, at most [`MAX_CREDIT`].
pub(super) fn credit_amount(amount: Decimal) -> Result<Decimal, SubscriptionError> {
    if amount <= Decimal::ZERO || amount > MAX_CREDIT || amount.normalize().scale() > 2 {
        return Err(ValidationError::new("amount", "must be a positive amount with at most two decimals, at most 1000000000.00").into());
    }
    Ok(round_cents(amount))
}

/// A reason: 1 to 500 characters, no control characters.
pub(super) fn reason(reason: String) -> Result<String, SubscriptionError> {
    let trimmed = reason.trim();
    if trimmed.is_empty() || trimmed.chars().count() > 500 || trimmed.chars().any(char::is_control) {
        return Err(ValidationError::new("reason", "must be 1 to 500 characters without control characters").into());
    }
    Ok(trimmed.to_owned())
}

pub(super) async fn grant_credit(
    s: &mut Subscription,
    grant_id: Uuid,
    amount: Decimal,
    why: String,
    expires_at: Option<DateTime<Utc>>,
    at: DateTime<Utc>,
    sink: &Sink,
) -> Outcome {
    let amount = credit_amount(amount)?;
    let reason = reason(why)?;
    if expires_at.is_some_and(|e| e <= at) {
        return Err(ValidationError::new("expires_at", "must be in the future").into());
    }
    if s.status == S::Cancelled {
        return Err(SubscriptionError::InvalidTransition { action: "grant credit to", status: s.status });
    }
    sink.write(E::CreditGranted { grant_id, amount, reason, expires_at, at }, s).await;
    Ok(())
}

pub(super) async fn issue_credit_note(
    s: &mut Subscription,
    invoice_id: Uuid,
    amount: Decimal,
    why: String,
    at: DateTime<Utc>,
    sink: &Sink,
) -> Outcome {
    let amount = credit_amount(amount)?;
    let reason = reason(why)?;
    let book = s.invoice_books.get(&invoice_id).cloned().ok_or(SubscriptionError::InvoiceNotFound)?;
    if s.voided.contains(&invoice_id) {
        return Err(SubscriptionError::InvoiceNotOpen("void"));
    }
    if book.credited + amount > book.subtotal {
        return Err(SubscriptionError::CreditNoteTooLarge { subtotal: book.subtotal, credited: book.credited, requested: amount });
    }
    let tax = round_cents(amount * s.tax_rate.percent() / Decimal::ONE_HUNDRED);
    let total = amount + tax;
    let due = s.unpaid.get(&invoice_id).copied().unwrap_or(Decimal::ZERO);
    let applied_to_invoice = total.min(due).max(Decimal::ZERO);
    let number = s.credit_notes_issued + 1;
    let subscription_id = s.id.expect("started");
    sink.write(
        E::CreditNoteIssued {
            credit_note_id: Uuid::new_v5(&subscription_id, format!("credit-note-{number}").as_bytes()),
            number: format!("CN-{}-{number:06}", s.tenant_code.to_ascii_uppercase()),
            invoice_id,
            subtotal: amount,
            tax,
            total,
            reason,
            applied_to_invoice,
            credited_to_balance: total - applied_to_invoice,
            created_at: at,
        },
        s,
    )
    .await;
    // An invoice settled by the note no longer counts for dunning.
    if matches!(s.status, S::PastDue | S::Suspended) && s.failed.is_empty() {
        sink.write(E::SubscriptionReactivated { reactivated_at: at }, s).await;
    }
    Ok(())
}
