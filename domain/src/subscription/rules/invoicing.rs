//! Invoices: the lines a period start bills in advance, numbering (`<CODE>-000001`, gap-free per
//! tenant; ids derived from the number), credit applied and the invoice issued.

use super::*;

/// The plan fee and add-ons for `period`, in advance.
pub(super) fn advance_lines(s: &Subscription, period: Period) -> Vec<InvoiceLine> {
    let plan = s.plan.as_ref().expect("started");
    let billing_period = s.billing_period.expect("started");
    let months = Decimal::from(months_in(billing_period));
    let dates = format!("{} – {}", period.start.format("%Y-%m-%d"), period.end.format("%Y-%m-%d"));
    let mut lines = vec![InvoiceLine::new(
        LineKind::Plan,
        format!("{} plan ({}), {dates}", plan.name, billing_period.as_str()),
        Decimal::ONE,
        plan.price(billing_period),
    )
    .over(period)];
    if s.addons.extra_users > 0 {
        lines.push(
            InvoiceLine::new(
                LineKind::Addon,
                format!("Extra users, {dates}"),
                Decimal::from(s.addons.extra_users),
                pricing::extra_user_monthly() * months,
            )
            .over(period),
        );
    }
    if s.addons.extra_storage_gb > 0 {
        lines.push(
            InvoiceLine::new(
                LineKind::Addon,
                format!("Extra storage (GB), {dates}"),
                Decimal::from(s.addons.extra_storage_gb),
                pricing::extra_storage_gb_monthly() * months,
            )
            .over(period),
        );
    }
    lines
}

pub(super) fn dates(period: Period) -> String {
    format!("{} – {}", period.start.format("%Y-%m-%d"), period.end.format("%Y-%m-%d"))
}

/// Issues an invoice for `period` with `lines`: a negative sum (an immediate downgrade's
/// unused difference) is carried to account credit, so no invoice ever has a negative total;
/// then tax; then the account credit that counts at `at` is applied to the total (never more
/// than either), and an invoice with nothing left to pay is paid at issue.
pub(super) async fn issue_invoice(s: &mut Subscription, period: Period, mut lines: Vec<InvoiceLine>, at: DateTime<Utc>, sink: &Sink) {
    // Charges waiting for the next invoice (seats added during the last period).
    lines.extend(s.pending_lines.iter().cloned());
    // A coupon's discount, before tax, on the sum of the other lines: never below zero.
    if let Some(discount) = &s.discount {
        let off = discount.coupon.discount(lines.iter().map(|l| l.amount).sum());
        if off > Decimal::ZERO {
            lines.push(InvoiceLine::fixed(LineKind::Discount, discount.coupon.describe(), -off));
        }
    }
    let sum: Decimal = lines.iter().map(|l| l.amount).sum();
    let mut credit_carried = Decimal::ZERO;
    if sum < Decimal::ZERO {
        // Of what goes below zero, the part corrections' negative usage lines make up is carried
        // with the tax it would have had (what was paid for it, tax included); a downgrade's
        // unused time is carried as it is.
        let corrected: Decimal = -lines
            .iter()
            .filter(|l| matches!(l.kind, LineKind::Usage | LineKind::Overage) && l.amount < Decimal::ZERO)
            .map(|l| l.amount)
            .sum::<Decimal>();
        let from_corrections = corrected.min(-sum);
        let tax = round_cents(from_corrections * s.tax_rate.percent() / Decimal::ONE_HUNDRED);
        credit_carried = -sum + tax;
        let description = if from_corrections > Decimal::ZERO {
            format!("Usage corrections beyond this invoice, carried to account credit (with {tax} tax)")
        } else {
            "Carried to account credit".to_owned()
        };
        lines.push(InvoiceLine::fixed(LineKind::Credit, description, -sum));
    }
    let money = totals(&lines, s.tax_rate);
    let credit_applied = credit_to_apply(money.total, s.available_credit(at));
    let number = s.invoices_issued + 1;
    let subscription_id = s.id.expect("started");
    sink.write(
        E::InvoiceIssued {
            invoice_id: invoice_id(subscription_id, number),
            number: format!("{}-{number:06}", s.tenant_code.to_ascii_uppercase()),
            period_start: period.start,
            period_end: period.end,
            currency: s.currency.clone(),
            lines,
            subtotal: money.subtotal,
            tax: money.tax,
            total: money.total,
            credit_applied,
            credit_carried,
            issued_at: at,
            due_at: at + Duration::days(i64::from(s.net_terms_days)),
            paid_at: (money.total - credit_applied <= Decimal::ZERO).then_some(at),
        },
        s,
    )
    .await;
}

/// The id of a subscription's `number`-th invoice (deterministic, so replays agree).
pub(crate) fn invoice_id(subscription_id: Uuid, number: u32) -> Uuid {
    Uuid::new_v5(&subscription_id, format!("invoice-{number}").as_bytes())
}
