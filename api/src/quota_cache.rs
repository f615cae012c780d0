//! The quota answers each instance keeps, so that a busy tenant's `GET /v1/quota` costs one
//! index probe instead of the quota statement while nothing of the tenant changed.

use commands::quota::QuotaLine;

/// Quota answers by tenant, each kept with the tenant's last position in the log and the
/// calendar month (UTC) it was read in, and served again while both are unchanged.
///
/// Sound because everything a quota answer shows follows from the tenant's own events (its
/// subscription's plan, limits, add-ons and period; its bookings, resources and members; its
/// usage facts) and the month (`bookings_per_month` counts the calendar month): with no new
/// event of the tenant, on any instance (the position is read from the log at every request),
/// and in the same month, the answer cannot differ. Only answers read with every read model
/// at or past that position are kept. Each instance keeps its own, at most
/// [`QuotaCache::CAPACITY`] tenants (then it starts afresh).
#[derive(Default)]
pub struct QuotaCache(std::sync::Mutex<std::collections::HashMap<uuid::Uuid, Kept>>);

/// A kept answer: the tenant's last position, the month, the lines.
type Kept = (i64, chrono::DateTime<chrono::Utc>, Vec<QuotaLine>);

impl QuotaCache {
    /// The most tenants kept.
    pub const CAPACITY: usize = 10_000;

    pub fn get(&self, tenant: uuid::Uuid, position: i64, month: chrono::DateTime<chrono::Utc>) -> Option<Vec<QuotaLine>> {
        let kept = self.0.lock().expect("not poisoned");
        kept.get(&tenant).filter(|(at, m, _)| *at == position && *m == month).map(|(_, _, lines)| lines.clone())
    }

    pub fn put(&self, tenant: uuid::Uuid, position: i64, month: chrono::DateTime<chrono::Utc>, lines: &[QuotaLine]) {
        let mut kept = self.0.lock().expect("not poisoned");
        if kept.len() >= Self::CAPACITY && !kept.contains_key(&tenant) {
            kept.clear();
        }
        kept.insert(tenant, (position, month, lines.to_vec()));
    }
}
