//! Given/when/then tests of every tenant transition, and of every refused one.

use chrono::{DateTime, TimeZone, Utc};
use cqrs_es::test::TestFramework;
use uuid::Uuid;

use super::*;
use crate::plan::{BillingPeriod, PlanCode};
use crate::values::*;

type Given = TestFramework<Tenant>;

fn at(day: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, day, 9, 0, 0).unwrap()
}

fn tenant_id() -> Uuid {
    Uuid::from_u128(1)
}

fn key(id: u128, role: ApiKeyRole, issued_by: Option<ApiKeyRole>) -> NewApiKey {
    NewApiKey {
        key_id: Uuid::from_u128(id),
        name: DisplayName::parse("desk", "name").unwrap(),
        role,
        key_hash: format!("hash-{id}"),
        key_prefix: format!("slk_{id}"),
        issued_by,
        at: at(2),
    }
}

fn new_tenant() -> NewTenant {
    NewTenant {
        tenant_id: tenant_id(),
        code: TenantCode::parse("acme-clinic").unwrap(),
        name: DisplayName::parse("Acme Clinic", "name").unwrap(),
        business_type: BusinessType::parse("clinic").unwrap(),
        timezone: TimeZoneName::parse("Europe/Zurich", "timezone").unwrap(),
        currency: CurrencyCode::parse("CHF").unwrap(),
        locale: Locale::parse("de-CH").unwrap(),
        billing_email: Sealed::from_stored("pii1:sealed-email".into()),
        plan: PlanCode::parse("starter").unwrap(),
        plan_version: 1,
        billing_period: BillingPeriod::Monthly,
        trial_days: 14,
        tax_rate: TaxRate::parse("8.1").unwrap(),
        subscription_id: Uuid::from_u128(2),
        owner_key: key(10, ApiKeyRole::Owner, None),
        at: at(1),
    }
}

fn created() -> Vec<TenantEvent> {
    let new = new_tenant();
    vec![
        new.created_event(),
        TenantEvent::ApiKeyIssued {
            key_id: Uuid::from_u128(10),
            name: DisplayName::parse("desk", "name").unwrap(),
            role: ApiKeyRole::Owner,
            key_hash: "hash-10".into(),
            key_prefix: "slk_10".into(),
            issued_at: at(2),
        },
    ]
}

fn suspended() -> Vec<TenantEvent> {
    let mut events = created();
    events.push(TenantEvent::TenantSuspended { source: SuspensionSource::Admin, reason: "fraud check".into(), suspended_at: at(3) });
    events
}

fn cancelled() -> Vec<TenantEvent> {
    let mut events = created();
    events.push(TenantEvent::TenantCancelled { reason: "closed".into(), cancelled_at: at(3) });
    events
}

#[test]
fn creating_a_tenant_records_it_and_its_owner_key() {
    Given::with(()).given_no_previous_events().when(TenantCommand::Create(Box::new(new_tenant()))).then_expect_events(created());
}

#[test]
fn a_tenant_cannot_be_created_twice() {
    Given::with(()).given(created()).when(TenantCommand::Create(Box::new(new_tenant()))).then_expect_error(TenantError::AlreadyExists);
}

#[test]
fn commands_on_a_missing_tenant_are_not_found() {
    for command in [
        TenantCommand::Suspend { source: SuspensionSource::Admin, reason: "x".into(), at: at(3) },
        TenantCommand::Reactivate { source: SuspensionSource::Admin, at: at(3) },
        TenantCommand::Cancel { reason: "x".into(), at: at(3) },
        TenantCommand::RevokeApiKey { key_id: Uuid::from_u128(10), at: at(3) },
        TenantCommand::UpdateBranding { branding: Branding::default(), at: at(3) },
        TenantCommand::IssueApiKey(key(11, ApiKeyRole::Member, None)),
    ] {
        Given::with(()).given_no_previous_events().when(command).then_expect_error(TenantError::NotFound);
    }
}

#[test]
fn suspend_and_reactivate() {
    Given::with(())
        .given(created())
        .when(TenantCommand::Suspend { source: SuspensionSource::Admin, reason: "fraud check".into(), at: at(3) })
        .then_expect_events(vec![TenantEvent::TenantSuspended {
            source: SuspensionSource::Admin,
            reason: "fraud check".into(),
            suspended_at: at(3),
        }]);
    Given::with(())
        .given(suspended())
        .when(TenantCommand::Reactivate { source: SuspensionSource::Admin, at: at(4) })
        .then_expect_events(vec![TenantEvent::TenantReactivated { reactivated_at: at(4) }]);
}

#[test]
fn illegal_lifecycle_transitions_are_refused() {
    use TenantStatus::*;
    let cases = [
        (suspended(), TenantCommand::Suspend { source: SuspensionSource::Admin, reason: "again".into(), at: at(4) }, "suspend", Suspended),
        (created(), TenantCommand::Reactivate { source: SuspensionSource::Admin, at: at(4) }, "reactivate", Active),
        (cancelled(), TenantCommand::Reactivate { source: SuspensionSource::Admin, at: at(4) }, "reactivate", Cancelled),
        (cancelled(), TenantCommand::Suspend { source: SuspensionSource::Admin, reason: "x".into(), at: at(4) }, "suspend", Cancelled),
        (cancelled(), TenantCommand::Cancel { reason: "x".into(), at: at(4) }, "cancel", Cancelled),
        (cancelled(), TenantCommand::UpdateBranding { branding: Branding::default(), at: at(4) }, "update the branding of", Cancelled),
        (cancelled(), TenantCommand::IssueApiKey(key(11, ApiKeyRole::Member, None)), "issue an API key for", Cancelled),
    ];
    for (given, command, action, status) in cases {
        Given::with(()).given(given).when(command).then_expect_error(TenantError::InvalidTransition { action, status });
    }
}

#[test]
fn cancel_is_final_from_active_or_suspended() {
    for given in [created(), suspended()] {
        Given::with(())
            .given(given)
            .when(TenantCommand::Cancel { reason: "closed".into(), at: at(5) })
            .then_expect_events(vec![TenantEvent::TenantCancelled { reason: "closed".into(), cancelled_at: at(5) }]);
    }
}

#[test]
fn branding_is_replaced_as_a_whole() {
    let branding = Branding {
        primary_color: Some(HexColor::parse("#112233", "primary_color").unwrap()),
        secondary_color: None,
        logo_url: Some(HttpsUrl::parse("https://cdn.example.com/l.png", "logo_url").unwrap()),
        custom_domain: Some(DomainName::parse("book.acme.example", "custom_domain").unwrap()),
    };
    Given::with(()).given(created()).when(TenantCommand::UpdateBranding { branding: branding.clone(), at: at(3) }).then_expect_events(
        vec![TenantEvent::BrandingUpdated {
            primary_color: branding.primary_color,
            secondary_color: None,
            logo_url: branding.logo_url,
            custom_domain: branding.custom_domain,
            updated_at: at(3),
        }],
    );
}

#[test]
fn keys_are_issued_within_the_issuers_role_and_revoked_once() {
    Given::with(())
        .given(created())
        .when(TenantCommand::IssueApiKey(key(11, ApiKeyRole::Readonly, Some(ApiKeyRole::Admin))))
        .then_expect_events(vec![TenantEvent::ApiKeyIssued {
            key_id: Uuid::from_u128(11),
            name: DisplayName::parse("desk", "name").unwrap(),
            role: ApiKeyRole::Readonly,
            key_hash: "hash-11".into(),
            key_prefix: "slk_11".into(),
            issued_at: at(2),
        }]);
    Given::with(())
        .given(created())
        .when(TenantCommand::IssueApiKey(key(11, ApiKeyRole::Owner, Some(ApiKeyRole::Admin))))
        .then_expect_error(TenantError::RoleNotGrantable { issuer: ApiKeyRole::Admin, role: ApiKeyRole::Owner });
    Given::with(())
        .given(created())
        .when(TenantCommand::IssueApiKey(key(11, ApiKeyRole::Readonly, Some(ApiKeyRole::Member))))
        .then_expect_error(TenantError::RoleNotGrantable { issuer: ApiKeyRole::Member, role: ApiKeyRole::Readonly });
    Given::with(())
        .given(created())
        .when(TenantCommand::IssueApiKey(key(10, ApiKeyRole::Member, None)))
        .then_expect_error(TenantError::KeyAlreadyExists);

    Given::with(())
        .given(created())
        .when(TenantCommand::RevokeApiKey { key_id: Uuid::from_u128(10), at: at(6) })
        .then_expect_events(vec![TenantEvent::ApiKeyRevoked { key_id: Uuid::from_u128(10), revoked_at: at(6) }]);
    let mut revoked = created();
    revoked.push(TenantEvent::ApiKeyRevoked { key_id: Uuid::from_u128(10), revoked_at: at(6) });
    Given::with(())
        .given(revoked)
        .when(TenantCommand::RevokeApiKey { key_id: Uuid::from_u128(10), at: at(7) })
        .then_expect_error(TenantError::KeyNotFound);
    Given::with(())
        .given(created())
        .when(TenantCommand::RevokeApiKey { key_id: Uuid::from_u128(99), at: at(7) })
        .then_expect_error(TenantError::KeyNotFound);
}

#[test]
fn events_round_trip_through_their_stored_json() {
    for event in suspended() {
        let json = serde_json::to_value(&event).unwrap();
        assert_eq!(json["type"], serde_json::Value::String(cqrs_es::DomainEvent::event_type(&event)));
        assert_eq!(serde_json::from_value::<TenantEvent>(json).unwrap(), event);
    }
}

#[test]
fn trials_longer_than_thirty_days_are_refused() {
    let mut new = new_tenant();
    new.trial_days = 31;
    Given::with(())
        .given_no_previous_events()
        .when(TenantCommand::Create(Box::new(new)))
        .then_expect_error(TenantError::Invalid(crate::ValidationError::new("trial_days", "must be between 0 and 30")));
}

#[test]
fn billing_lifts_only_the_suspensions_it_imposed() {
    let billing_reactivation = || TenantCommand::Reactivate { source: SuspensionSource::Billing, at: at(5) };
    Given::with(()).given(suspended()).when(billing_reactivation()).then_expect_events(vec![]);
    let mut by_billing = created();
    by_billing.push(TenantEvent::TenantSuspended {
        source: SuspensionSource::Billing,
        reason: "payment overdue".into(),
        suspended_at: at(3),
    });
    Given::with(())
        .given(by_billing)
        .when(billing_reactivation())
        .then_expect_events(vec![TenantEvent::TenantReactivated { reactivated_at: at(5) }]);
}

#[test]
fn erasure_is_recorded_once_from_any_created_state_and_is_final() {
    for given in [created(), suspended(), cancelled()] {
        Given::with(())
            .given(given)
            .when(TenantCommand::Erase { at: at(6) })
            .then_expect_events(vec![TenantEvent::TenantErased { erased_at: at(6) }]);
    }
    let mut erased = cancelled();
    erased.push(TenantEvent::TenantErased { erased_at: at(6) });
    Given::with(()).given(erased.clone()).when(TenantCommand::Erase { at: at(7) }).then_expect_events(vec![]);
    Given::with(())
        .given(erased.clone())
        .when(TenantCommand::Reactivate { source: SuspensionSource::Admin, at: at(7) })
        .then_expect_error(TenantError::InvalidTransition { action: "reactivate", status: TenantStatus::Erased });
    Given::with(())
        .given(erased)
        .when(TenantCommand::IssueApiKey(key(11, ApiKeyRole::Member, None)))
        .then_expect_error(TenantError::InvalidTransition { action: "issue an API key for", status: TenantStatus::Erased });
    Given::with(()).given_no_previous_events().when(TenantCommand::Erase { at: at(6) }).then_expect_error(TenantError::NotFound);
}
