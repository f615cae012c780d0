use rust_decimal::Decimal;
use serde_json::{Map, Value};

use super::SubscriptionStatus;
use crate::{Rejection, RejectionKind, ValidationError};

/// Why a subscription command was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubscriptionError {
    /// Bad input.
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    /// No such subscription.
    #[error("subscription not found")]
    NotFound,
    /// Started twice.
    #[error("the subscription exists already")]
    AlreadyExists,
    /// Not allowed in the current status.
    #[error("cannot {action} a subscription that is {}", status.as_str())]
    InvalidTransition {
        /// What was attempted.
        action: &'static str,
        /// The status that forbids it.
        status: SubscriptionStatus,
    },
    /// The change would change nothing.
    #[error("{0}")]
    NothingToChange(&'static str),
    /// The invoice is no longer open (`paid` or `void`).
    #[error("the invoice is {0}")]
    InvoiceNotOpen(&'static str),
    /// The invoice is not this subscription's.
    #[error("invoice not found")]
    InvoiceNotFound,
    /// A payment that does not match the invoice.
    #[error("the payment of {paid} {currency} does not match the invoice total of {expected} {expected_currency}")]
    PaymentMismatch {
        /// The invoice total.
        expected: Decimal,
        /// The invoice currency.
        expected_currency: String,
        /// What was paid.
        paid: Decimal,
        /// In what.
        currency: String,
    },
    /// A coupon that cannot be redeemed on this subscription.
    #[error("{message}")]
    CouponNotApplicable {
        /// `already_active`, `expired`, `plan` or `currency`.
        reason: &'static str,
        /// For people.
        message: String,
        /// The coupon's code.
        coupon: String,
    },
    /// Credit notes beyond the invoice's subtotal.
    #[error("the credit notes of an invoice cannot exceed its subtotal of {subtotal} ({credited} credited so far, {requested} requested)")]
    CreditNoteTooLarge {
        /// The invoice's subtotal.
        subtotal: Decimal,
        /// Credited so far.
        credited: Decimal,
        /// Requested.
        requested: Decimal,
    },
    /// Usage could not be read for the arrears.
    #[error("usage unavailable: {0}")]
    UsageUnavailable(String),
}

impl Rejection for SubscriptionError {
    fn kind(&self) -> RejectionKind {
        match self {
            Self::Invalid(_) | Self::PaymentMismatch { .. } => RejectionKind::Validation,
            Self::NotFound | Self::InvoiceNotFound => RejectionKind::NotFound,
            Self::AlreadyExists
            | Self::InvalidTransition { .. }
            | Self::InvoiceNotOpen(_)
            | Self::NothingToChange(_)
            | Self::CreditNoteTooLarge { .. }
            | Self::CouponNotApplicable { .. }
            | Self::UsageUnavailable(_) => RejectionKind::Conflict,
        }
    }

    fn code(&self) -> &str {
        match self {
            Self::Invalid(_) | Self::PaymentMismatch { .. } => "VALIDATION_FAILED",
            Self::NotFound | Self::InvoiceNotFound => "NOT_FOUND",
            Self::InvalidTransition { .. } | Self::InvoiceNotOpen(_) => "INVALID_STATE_TRANSITION",
            Self::CouponNotApplicable { .. } => "COUPON_NOT_APPLICABLE",
            Self::AlreadyExists | Self::NothingToChange(_) | Self::UsageUnavailable(_) | Self::CreditNoteTooLarge { .. } => "CONFLICT",
        }
    }

    fn details(&self) -> Map<String, Value> {
        let mut details = Map::new();
        match self {
            Self::Invalid(e) => return e.details(),
            Self::InvalidTransition { status, .. } => {
                details.insert("status".into(), status.as_str().into());
            }
            Self::PaymentMismatch { .. } => {
                details.insert("field".into(), "amount".into());
            }
            Self::CouponNotApplicable { reason, coupon, .. } => {
                details.insert("reason".into(), (*reason).into());
                details.insert("coupon".into(), coupon.clone().into());
            }
            Self::CreditNoteTooLarge { subtotal, credited, requested } => {
                details.insert("field".into(), "amount".into());
                details.insert("subtotal".into(), crate::billing::money::format(*subtotal).into());
                details.insert("credited".into(), crate::billing::money::format(*credited).into());
                details.insert("requested".into(), crate::billing::money::format(*requested).into());
            }
            _ => {}
        }
        details
    }
}
