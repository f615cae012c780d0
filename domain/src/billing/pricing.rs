//! The contract's add-on and usage prices.

use rust_decimal::Decimal;

/// An extra user, per user per month.
pub fn extra_user_monthly() -> Decimal {
    Decimal::new(500, 2)
}

/// Extra storage, per GB per month.
pub fn extra_storage_gb_monthly() -> Decimal {
    Decimal::new(10, 2)
}

/// One SMS.
pub fn sms_each() -> Decimal {
    Decimal::new(5, 2)
}

/// API calls beyond the allowance: per started block of 1,000.
pub fn api_call_block() -> Decimal {
    Decimal::new(50, 2)
}

/// Calls per overage block.
pub const API_CALL_BLOCK_SIZE: u64 = 1000;

/// How many started blocks of 1,000 calls lie beyond `allowance` (`None`: unlimited):
/// 10,001 calls on a 10,000 allowance → 1; 12,000 → 2; 12,001 → 3.
pub fn api_call_overage_blocks(calls: u64, allowance: Option<u64>) -> u64 {
    match allowance {
        None => 0,
        Some(allowance) => calls.saturating_sub(allowance).div_ceil(API_CALL_BLOCK_SIZE),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn started_blocks_as_in_the_contract() {
        assert_eq!(api_call_overage_blocks(10_000, Some(10_000)), 0);
        assert_eq!(api_call_overage_blocks(10_001, Some(10_000)), 1);
        assert_eq!(api_call_overage_blocks(12_000, Some(10_000)), 2);
        assert_eq!(api_call_overage_blocks(12_001, Some(10_000)), 3);
        assert_eq!(api_call_overage_blocks(5_000_000, None), 0);
    }
}
