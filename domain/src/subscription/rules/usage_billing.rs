//! Usage billed in arrears: the metered charges of the period that ended (overage beyond the plan's
//! allowance, the plan's own usage charges), and late usage: facts that arrive after their period
//! was invoiced are billed as the difference on the next invoice.

use super::*;

/// What a period's `usage` costs when `allowance` API calls are included (`None`: unlimited):
/// API calls beyond it per started 1,000, and SMS each.
pub(super) fn charges_for(usage: BillableUsage, allowance: Option<u64>) -> Vec<MeteredCharge> {
    let blocks = pricing::api_call_overage_blocks(usage.api_calls, allowance);
    vec![
        MeteredCharge {
            charge: None,
            metric: API_CALLS.into(),
            quantity: Decimal::from(usage.api_calls),
            included: allowance,
            amount: round_cents(Decimal::from(blocks) * pricing::api_call_block()),
        },
        MeteredCharge {
            charge: None,
            metric: SMS.into(),
            quantity: Decimal::from(usage.sms),
            included: None,
            amount: round_cents(Decimal::from(usage.sms) * pricing::sms_each()),
        },
    ]
}

/// The plan's own charges on `usage` of a period: their lines and what each counted and cost.
pub(super) fn plan_charges(
    charges: &[Charge],
    usage: &BTreeMap<String, Decimal>,
    period: Period,
) -> (Vec<InvoiceLine>, Vec<MeteredCharge>) {
    let (mut lines, mut billed) = (Vec::new(), Vec::new());
    let dates = dates(period);
    for charge in charges {
        let quantity = usage.get(&charge.metric).copied().unwrap_or_default();
        let priced: Vec<InvoiceLine> = charge.lines(quantity, &dates).into_iter().map(|l| l.over(period)).collect();
        let amount = priced.iter().map(|l| l.amount).sum();
        lines.extend(priced);
        billed.push(MeteredCharge {
            charge: Some(charge.clone()),
            metric: charge.metric.clone(),
            quantity,
            included: Some(charge.included),
            amount,
        });
    }
    (lines, billed)
}

pub(super) const API_CALLS: &str = "api_calls";
pub(super) const SMS: &str = "sms";

/// Usage of the closed `period` billed in arrears under the current terms: the invoice lines
/// (API calls beyond the allowance, SMS) and the `UsageBilled` fact that remembers what they
/// counted, for late facts.
pub(super) async fn arrears(
    s: &Subscription,
    meter: &dyn UsageMeter,
    period: Period,
    at: DateTime<Utc>,
) -> Result<(Vec<InvoiceLine>, E), SubscriptionError> {
    let usage = meter.billable_usage(s.tenant_id.expect("started"), period).await.map_err(SubscriptionError::UsageUnavailable)?;
    let plan = s.plan.as_ref().expect("started");
    let months = u64::from(months_in(s.billing_period.expect("started")));
    let allowance = plan.limits.api_calls_per_month.map(|a| a * months);
    let dates = dates(period);
    let mut lines = Vec::new();
    // The plan's own charges; the default catalog's API-call overage is billed as built in.
    let own: Vec<Charge> = plan.charges.iter().filter(|c| !c.is_api_call_overage(plan.limits.api_calls_per_month)).cloned().collect();
    let charged = |metric: &str| own.iter().any(|c| c.metric == metric);
    let blocks = if charged(API_CALLS) { 0 } else { pricing::api_call_overage_blocks(usage.api_calls, allowance) };
    if blocks > 0 {
        let description = format!(
            "API calls beyond the allowance: {} of {} included, per started 1,000, {dates}",
            usage.api_calls,
            allowance.unwrap_or_default()
        );
        lines.push(
            InvoiceLine::new(LineKind::Overage, description, Decimal::from(blocks), pricing::api_call_block())
                .over(period)
                .of_metric(API_CALLS),
        );
    }
    if usage.sms > 0 && !charged(SMS) {
        lines.push(
            InvoiceLine::new(LineKind::Overage, format!("SMS, {dates}"), Decimal::from(usage.sms), pricing::sms_each())
                .over(period)
                .of_metric(SMS),
        );
    }
    let mut charges: Vec<MeteredCharge> = charges_for(usage, allowance).into_iter().filter(|c| !charged(&c.metric)).collect();
    if !own.is_empty() {
        let metrics = own.iter().map(|c| c.metric.clone()).collect();
        let metered = meter.metered(s.tenant_id.expect("started"), period, metrics).await.map_err(SubscriptionError::UsageUnavailable)?;
        let (priced, billed) = plan_charges(&own, &metered, period);
        lines.extend(priced);
        charges.extend(billed);
    }
    let billed = E::UsageBilled { period_start: period.start, period_end: period.end, charges, billed_at: at };
    Ok((lines, billed))
}

/// Bills the usage of the closed `period` in arrears and the late usage found in earlier
/// periods: writes their `UsageBilled` facts and answers the invoice lines.
pub(super) async fn bill_usage(
    s: &mut Subscription,
    meter: &dyn UsageMeter,
    period: Period,
    at: DateTime<Utc>,
    sink: &Sink,
) -> Result<Vec<InvoiceLine>, SubscriptionError> {
    // The closed period and every period still open to late usage, read at once.
    let tenant_id = s.tenant_id.expect("started");
    let periods = std::iter::once(period).chain(s.usage_billed.iter().map(|(&start, b)| Period { start, end: b.period_end })).collect();
    let mut metrics: Vec<String> = vec![API_CALLS.into(), SMS.into()];
    let plan = s.plan.as_ref().expect("started");
    let named = plan.charges.iter().map(|c| &c.metric).chain(s.usage_billed.values().flat_map(|b| b.charges.iter().map(|c| &c.metric)));
    for metric in named {
        if !metrics.contains(metric) {
            metrics.push(metric.clone());
        }
    }
    let read = Prefetched::read(meter, tenant_id, periods, metrics).await.map_err(SubscriptionError::UsageUnavailable)?;
    let meter: &dyn UsageMeter = &read;
    let (mut lines, billed) = arrears(s, meter, period, at).await?;
    // Before the closed period joins the billed ones, so that it is not read twice.
    let (late, _) = bill_late_usage(s, meter, at, sink).await?;
    sink.write(billed, s).await;
    lines.extend(late);
    Ok(lines)
}

/// [`late_usage`], with its `UsageBilled` facts written: the lines and the span of the periods.
pub(super) async fn bill_late_usage(
    s: &mut Subscription,
    meter: &dyn UsageMeter,
    at: DateTime<Utc>,
    sink: &Sink,
) -> Result<(Vec<InvoiceLine>, Option<Period>), SubscriptionError> {
    let (lines, billed, span) = late_usage(s, meter, at).await?;
    for event in billed {
        sink.write(event, s).await;
    }
    Ok((lines, span))
}

/// Late usage found at `at`: for every billed period whose usage can still change (see
/// [`crate::subscription::LATE_USAGE_DAYS`]) and has changed, the charge for the period with the late facts
/// minus what was billed for it, under the period's own terms (its allowance), as lines naming
/// the period, and the `UsageBilled` facts with the new figures. Also the span of those periods.
pub(super) async fn late_usage(
    s: &Subscription,
    meter: &dyn UsageMeter,
    at: DateTime<Utc>,
) -> Result<(Vec<InvoiceLine>, Vec<E>, Option<Period>), SubscriptionError> {
    let tenant_id = s.tenant_id.expect("started");
    let (mut lines, mut events, mut span) = (Vec::new(), Vec::new(), None::<Period>);
    for (&start, billed) in &s.usage_billed {
        let period = Period { start, end: billed.period_end };
        let dates = dates(period);
        // The plan's own charges of the period, priced again under the charges that billed them.
        let own: Vec<Charge> = billed.charges.iter().filter_map(|c| c.charge.clone()).collect();
        let mut charges: Vec<MeteredCharge> = Vec::new();
        let mut changed = false;
        if !own.is_empty() {
            let metrics = own.iter().map(|c| c.metric.clone()).collect();
            let metered = meter.metered(tenant_id, period, metrics).await.map_err(SubscriptionError::UsageUnavailable)?;
            let (_, now) = plan_charges(&own, &metered, period);
            for (after, before) in now.iter().zip(billed.charges.iter().filter(|c| c.charge.is_some())) {
                // More facts (late usage) or fewer (corrections): the difference, either way.
                if after.quantity != before.quantity {
                    changed = true;
                    let extra = after.amount - before.amount;
                    if !extra.is_zero() {
                        let what = if after.quantity > before.quantity { "late usage" } else { "usage corrected" };
                        let description =
                            format!("{}, {what} for {dates}: {} ({} billed before)", after.metric, after.quantity, before.quantity);
                        lines.push(InvoiceLine::fixed(LineKind::Usage, description, extra).over(period).of_metric(after.metric.clone()));
                    }
                }
            }
            charges.extend(now);
        }
        let builtin = |metric: &str| billed.charges.iter().any(|c| c.charge.is_none() && c.metric == metric);
        let usage = if builtin(API_CALLS) || builtin(SMS) {
            meter.billable_usage(tenant_id, period).await.map_err(SubscriptionError::UsageUnavailable)?
        } else {
            BillableUsage::default()
        };
        let before = |metric: &str| billed.charges.iter().find(|c| c.charge.is_none() && c.metric == metric);
        let counted = |metric: &str| before(metric).map_or(0, |c| rust_decimal::prelude::ToPrimitive::to_u64(&c.quantity).unwrap_or(0));
        let builtin_changed = (builtin(API_CALLS) && usage.api_calls != counted(API_CALLS)) || (builtin(SMS) && usage.sms != counted(SMS));
        if !changed && !builtin_changed {
            continue;
        }
        let allowance = before(API_CALLS).and_then(|c| c.included);
        charges.splice(0..0, charges_for(usage, allowance).into_iter().filter(|c| builtin(&c.metric)));
        let extra = |metric: &str| {
            let now = charges.iter().find(|c| c.metric == metric).map_or(Decimal::ZERO, |c| c.amount);
            now - before(metric).map_or(Decimal::ZERO, |c| c.amount)
        };
        let what = |now: u64, before: u64| if now > before { "late usage" } else { "usage corrected" };
        if builtin(API_CALLS) && !extra(API_CALLS).is_zero() {
            let blocks = pricing::api_call_overage_blocks(usage.api_calls, allowance) as i128
                - pricing::api_call_overage_blocks(counted(API_CALLS), allowance) as i128;
            let description = format!(
                "API calls beyond the allowance, {} for {dates}: {} of {} included ({} billed before), per started 1,000",
                what(usage.api_calls, counted(API_CALLS)),
                usage.api_calls,
                allowance.unwrap_or_default(),
                counted(API_CALLS)
            );
            lines.push(
                InvoiceLine::new(LineKind::Overage, description, Decimal::from(blocks), pricing::api_call_block())
                    .over(period)
                    .of_metric(API_CALLS),
            );
        }
        if builtin(SMS) && !extra(SMS).is_zero() {
            let description = format!("SMS, {} for {dates} ({} billed before)", what(usage.sms, counted(SMS)), counted(SMS));
            let difference = usage.sms as i128 - counted(SMS) as i128;
            lines.push(
                InvoiceLine::new(LineKind::Overage, description, Decimal::from(difference), pricing::sms_each())
                    .over(period)
                    .of_metric(SMS),
            );
        }
        span = Some(span.map_or(period, |p| Period { start: p.start.min(period.start), end: p.end.max(period.end) }));
        events.push(E::UsageBilled { period_start: start, period_end: period.end, charges, billed_at: at });
    }
    Ok((lines, events, span))
}
