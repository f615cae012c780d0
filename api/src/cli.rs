//! The work behind the command line's subcommands that is worth testing on its own: `replay`
//! (a tenant's history in global order, NDJSON or a table) and `simulate` (reading the
//! candidate plans, naming the tenants, printing the result as tables). Argument parsing and
//! the other subcommands (`serve`, `migrate`, `projections`, `admin-token`) are in `main.rs`.

use std::io::Write;

use chrono::{DateTime, Utc};
use projections::StoredEvent;
use sqlx::PgPool;

/// What `replay` prints.
#[derive(Debug, Clone)]
pub struct ReplayFilter {
    /// The tenant's code.
    pub tenant_code: String,
    /// Only events that occurred at or after this instant.
    pub from: Option<DateTime<Utc>>,
    /// Only events that occurred before this instant.
    pub to: Option<DateTime<Utc>>,
    /// Only one aggregate, `TYPE:ID`.
    pub aggregate: Option<String>,
    /// Aligned columns with summaries instead of NDJSON.
    pub table: bool,
}

/// Boxed error for the CLI.
pub type CliError = Box<dyn std::error::Error + Send + Sync>;

/// Writes a tenant's events in global order to `out`, 5,000 at a time.
pub async fn replay(pool: &PgPool, filter: &ReplayFilter, out: &mut impl Write) -> Result<(), CliError> {
    let log = projections::EventLog::new(pool.clone());
    let tenant_id = log.tenant_by_code(&filter.tenant_code).await?.ok_or_else(|| format!("no tenant with code {}", filter.tenant_code))?;
    let (aggregate_type, aggregate_id) = match filter.aggregate.as_deref().map(|a| a.split_once(':')) {
        None => (None, None),
        Some(Some((t, id))) => (Some(t.to_owned()), Some(id.to_owned())),
        Some(None) => return Err("--aggregate takes TYPE:ID".into()),
    };
    let mut after = 0i64;
    let mut header_written = false;
    loop {
        let aggregate = aggregate_type.as_deref().zip(aggregate_id.as_deref());
        let events = log.read_tenant(tenant_id, after, aggregate, 5000).await?;
        let Some(last) = events.last() else { return Ok(()) };
        after = last.position;
        let in_window =
            |e: &&StoredEvent| filter.from.is_none_or(|f| e.occurred_at() >= f) && filter.to.is_none_or(|t| e.occurred_at() < t);
        for event in events.iter().filter(in_window) {
            if filter.table {
                if !header_written {
                    writeln!(out, "{:>10}  {:<20}  {:<13} {:<38} {:<22} SUMMARY", "POSITION", "OCCURRED_AT", "AGGREGATE", "ID", "EVENT")?;
                    header_written = true;
                }
                writeln!(
                    out,
                    "{:>10}  {:<20}  {:<13} {:<38} {:<22} {}",
                    event.position,
                    event.occurred_at().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                    fit(&event.aggregate_type, 13),
                    fit(&event.aggregate_id, 38),
                    fit(&event.event_type, 22),
                    projections::audit::summary(event)
                )?;
            } else {
                writeln!(out, "{}", serde_json::to_string(event)?)?;
            }
        }
    }
}

/// `text` in at most `width` characters: longer text keeps its start and ends in `…` (the
/// NDJSON format has every field whole).
fn fit(text: &str, width: usize) -> std::borrow::Cow<'_, str> {
    if text.chars().count() <= width {
        return std::borrow::Cow::Borrowed(text);
    }
    let kept: String = text.chars().take(width.saturating_sub(1)).collect();
    std::borrow::Cow::Owned(format!("{kept}…"))
}

/// The candidate plans of `saas-ledger simulate --plans FILE`: a JSON array of bodies as for
/// `POST /v1/plans`, checked as the API checks them.
pub fn candidate_plans(json: &str) -> Result<Vec<domain::plan::Plan>, CliError> {
    let bodies: Vec<serde_json::Value> = serde_json::from_str(json).map_err(|e| format!("the plans file is not a JSON array: {e}"))?;
    let mut plans = Vec::with_capacity(bodies.len());
    for (i, body) in bodies.into_iter().enumerate() {
        let body: crate::routes::plans::PublishPlan = serde_json::from_value(body).map_err(|e| format!("plans[{i}]: {e}"))?;
        let plan = crate::routes::plans::plan_from_body(body).map_err(|e| format!("plans[{i}]: {}", e.message))?;
        plans.push(plan);
    }
    Ok(plans)
}

/// Tenants by code (or id), for `simulate --tenant`.
pub async fn tenant_ids(pool: &PgPool, references: &[String]) -> Result<Vec<uuid::Uuid>, CliError> {
    let mut ids = Vec::with_capacity(references.len());
    for reference in references {
        let id = projections::ReadModels::new(pool.clone()).tenants().id_by_reference(reference).await?;
        ids.push(id.ok_or_else(|| format!("no tenant {reference}"))?);
    }
    Ok(ids)
}

/// Prints a simulation's result as tables: totals, then by month, plan and tenant, then the
/// facts beyond the candidate's limits and the refused commands.
pub fn print_simulation(result: &projections::simulation::SimulationResult, out: &mut impl Write) -> std::io::Result<()> {
    use projections::simulation::Figures;
    let row = |out: &mut dyn Write, label: &str, f: &Figures| {
        writeln!(out, "{:<28} {:>14} {:>14} {:>14}", fit(label, 28), f.actual, f.simulated, f.difference)
    };
    writeln!(out, "{:<28} {:>14} {:>14} {:>14}", "", "actual", "simulated", "difference")?;
    row(out, "total", &result.totals)?;
    writeln!(out, "\nby month")?;
    for m in &result.by_month {
        row(out, &m.month, &m.figures)?;
    }
    writeln!(out, "\nby plan")?;
    for p in &result.by_plan {
        row(out, &p.plan, &p.figures)?;
    }
    writeln!(out, "\nby tenant")?;
    for t in &result.by_tenant {
        row(out, &t.code, &t.figures)?;
    }
    if !result.over_limit.is_empty() {
        writeln!(out, "\nbeyond the candidate's limits (kept as they happened)")?;
        for o in &result.over_limit {
            let month = o.month.as_deref().unwrap_or("");
            writeln!(out, "{:<28} {:<20} {:<8} limit {:>8} used {:>8}", fit(&o.code, 28), o.metric, month, o.limit, o.used)?;
        }
    }
    writeln!(
        out,
        "\n{} subscriptions, {} invoices issued, {} simulated, {} real commands refused by the simulated history",
        result.subscriptions, result.invoices_actual, result.invoices_simulated, result.refused_commands
    )?;
    for r in &result.refused {
        writeln!(out, "  {}: {}", r.tenant_id, r.reason)?;
    }
    Ok(())
}
