//! Members: the people of a tenant's team, each a seat. One stream per member: invited →
//! active (accepted) → removed; the role can change while not removed. E-mail and name are
//! personal data and arrive sealed with the tenant's key.
//!
//! Two rules span members, so the event store enforces them atomically with the append
//! (`migrations/0011_members.sql`): seats (invited + active members) never pass the limit the
//! invitation carries, and an e-mail is unique among a tenant's members that are not removed
//! (the invitation carries a keyed digest of it, never the address).

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::tenant::ApiKeyRole;
use crate::values::Sealed;
use crate::{Rejection, RejectionKind};

/// Where a member is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = domain::MemberStatus))]
#[serde(rename_all = "snake_case")]
pub enum MemberStatus {
    /// Not invited yet.
    #[default]
    New,
    /// Invited; holds a seat.
    Invited,
    /// Accepted; holds a seat.
    Active,
    /// Removed; its seat is free.
    Removed,
}

impl MemberStatus {
    /// The wire name.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::New => "new",
            Self::Invited => "invited",
            Self::Active => "active",
            Self::Removed => "removed",
        }
    }
}

/// The Member aggregate.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = domain::Member))]
pub struct Member {
    /// Its tenant.
    pub tenant_id: Option<Uuid>,
    /// Status.
    pub status: MemberStatus,
    /// Role.
    pub role: Option<ApiKeyRole>,
    /// The e-mail's keyed digest (uniqueness).
    pub email_key: String,
}

/// An invitation, validated, with its personal data sealed.
#[derive(Debug, Clone)]
pub struct Invitation {
    /// The tenant.
    pub tenant_id: Uuid,
    /// E-mail (sealed).
    pub email: Sealed,
    /// A keyed digest of the normalised e-mail (unique among the tenant's members).
    pub email_key: String,
    /// Name (sealed), if given.
    pub name: Option<Sealed>,
    /// Role.
    pub role: ApiKeyRole,
    /// The seats the tenant may hold with this one (`None`: unlimited).
    pub seat_limit: Option<u64>,
    /// When.
    pub at: DateTime<Utc>,
}

/// Member commands.
#[derive(Debug, Clone)]
pub enum MemberCommand {
    /// Invite (takes a seat).
    Invite(Box<Invitation>),
    /// Accept the invitation.
    Accept {
        /// When.
        at: DateTime<Utc>,
    },
    /// Change the role.
    ChangeRole {
        /// The new role.
        role: ApiKeyRole,
        /// When.
        at: DateTime<Utc>,
    },
    /// Remove (frees the seat at once).
    Remove {
        /// When.
        at: DateTime<Utc>,
    },
}

/// Member events.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum MemberEvent {
    /// Invited: a seat is taken.
    MemberInvited {
        /// The tenant.
        tenant_id: Uuid,
        /// E-mail (sealed).
        email: Sealed,
        /// Keyed digest of the e-mail.
        email_key: String,
        /// Name (sealed).
        name: Option<Sealed>,
        /// Role.
        role: ApiKeyRole,
        /// The seat limit the store enforces with this invitation (`null`: unlimited).
        seat_limit: Option<u64>,
        /// When.
        invited_at: DateTime<Utc>,
    },
    /// Accepted.
    MemberAccepted {
        /// The tenant.
        tenant_id: Uuid,
        /// When.
        accepted_at: DateTime<Utc>,
    },
    /// The role changed.
    MemberRoleChanged {
        /// The tenant.
        tenant_id: Uuid,
        /// The new role.
        role: ApiKeyRole,
        /// When.
        at: DateTime<Utc>,
    },
    /// Removed: the seat is free.
    MemberRemoved {
        /// The tenant.
        tenant_id: Uuid,
        /// Keyed digest of the e-mail (freed for a new invitation).
        email_key: String,
        /// When.
        removed_at: DateTime<Utc>,
    },
}

impl DomainEvent for MemberEvent {
    fn event_type(&self) -> String {
        match self {
            Self::MemberInvited { .. } => "MemberInvited",
            Self::MemberAccepted { .. } => "MemberAccepted",
            Self::MemberRoleChanged { .. } => "MemberRoleChanged",
            Self::MemberRemoved { .. } => "MemberRemoved",
        }
        .to_owned()
    }
    fn event_version(&self) -> String {
        "1.0".to_owned()
    }
}

/// Why a member command was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MemberError {
    /// No such member.
    #[error("member not found")]
    NotFound,
    /// Invited twice.
    #[error("the member exists already")]
    AlreadyExists,
    /// Not allowed in the current status.
    #[error("cannot {action} a member who is {}", status.as_str())]
    InvalidTransition {
        /// What was attempted.
        action: &'static str,
        /// The status.
        status: MemberStatus,
    },
}

impl Rejection for MemberError {
    fn kind(&self) -> RejectionKind {
        match self {
            Self::NotFound => RejectionKind::NotFound,
            Self::AlreadyExists | Self::InvalidTransition { .. } => RejectionKind::Conflict,
        }
    }
    fn code(&self) -> &str {
        match self {
            Self::NotFound => "NOT_FOUND",
            Self::AlreadyExists => "CONFLICT",
            Self::InvalidTransition { .. } => "INVALID_STATE_TRANSITION",
        }
    }
    fn details(&self) -> serde_json::Map<String, serde_json::Value> {
        let mut details = serde_json::Map::new();
        if let Self::InvalidTransition { status, .. } = self {
            details.insert("status".into(), status.as_str().into());
        }
        details
    }
}

impl Aggregate for Member {
    const TYPE: &'static str = "Member";
    type Command = MemberCommand;
    type Event = MemberEvent;
    type Error = MemberError;
    type Services = ();

    async fn handle(&mut self, command: Self::Command, _: &Self::Services, sink: &EventSink<Self>) -> Result<(), Self::Error> {
        use MemberStatus as S;
        let tenant_id = self.tenant_id;
        match (command, self.status) {
            (MemberCommand::Invite(i), S::New) => {
                let Invitation { tenant_id, email, email_key, name, role, seat_limit, at } = *i;
                sink.write(MemberEvent::MemberInvited { tenant_id, email, email_key, name, role, seat_limit, invited_at: at }, self).await;
            }
            (MemberCommand::Invite(_), _) => return Err(MemberError::AlreadyExists),
            (_, S::New) => return Err(MemberError::NotFound),
            (MemberCommand::Accept { at }, S::Invited) => {
                sink.write(MemberEvent::MemberAccepted { tenant_id: tenant_id.expect("invited"), accepted_at: at }, self).await;
            }
            (MemberCommand::Accept { .. }, status) => {
                return Err(MemberError::InvalidTransition { action: "accept the invitation of", status })
            }
            (MemberCommand::ChangeRole { .. }, S::Removed) => {
                return Err(MemberError::InvalidTransition { action: "change the role of", status: S::Removed })
            }
            (MemberCommand::ChangeRole { role, at }, _) => {
                if self.role != Some(role) {
                    sink.write(MemberEvent::MemberRoleChanged { tenant_id: tenant_id.expect("invited"), role, at }, self).await;
                }
            }
            (MemberCommand::Remove { .. }, S::Removed) => {
                return Err(MemberError::InvalidTransition { action: "remove", status: S::Removed })
            }
            (MemberCommand::Remove { at }, _) => {
                let email_key = self.email_key.clone();
                sink.write(MemberEvent::MemberRemoved { tenant_id: tenant_id.expect("invited"), email_key, removed_at: at }, self).await;
            }
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        match event {
            MemberEvent::MemberInvited { tenant_id, email_key, role, .. } => {
                self.tenant_id = Some(tenant_id);
                self.email_key = email_key;
                self.role = Some(role);
                self.status = MemberStatus::Invited;
            }
            MemberEvent::MemberAccepted { .. } => self.status = MemberStatus::Active,
            MemberEvent::MemberRoleChanged { role, .. } => self.role = Some(role),
            MemberEvent::MemberRemoved { .. } => self.status = MemberStatus::Removed,
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use cqrs_es::test::TestFramework;

    use super::*;

    fn at() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2027, 1, 1, 0, 0, 0).unwrap()
    }

    fn invited() -> MemberEvent {
        MemberEvent::MemberInvited {
            tenant_id: Uuid::nil(),
            email: Sealed::from_stored("sealed".into()),
            email_key: "k".into(),
            name: None,
            role: ApiKeyRole::Member,
            seat_limit: Some(3),
            invited_at: at(),
        }
    }

    #[test]
    fn a_member_is_invited_accepts_changes_role_and_is_removed_once() {
        TestFramework::<Member>::with(())
            .given(vec![invited()])
            .when(MemberCommand::Accept { at: at() })
            .then_expect_events(vec![MemberEvent::MemberAccepted { tenant_id: Uuid::nil(), accepted_at: at() }]);
        TestFramework::<Member>::with(())
            .given(vec![invited(), MemberEvent::MemberAccepted { tenant_id: Uuid::nil(), accepted_at: at() }])
            .when(MemberCommand::Accept { at: at() })
            .then_expect_error(MemberError::InvalidTransition { action: "accept the invitation of", status: MemberStatus::Active });
        TestFramework::<Member>::with(())
            .given(vec![invited()])
            .when(MemberCommand::ChangeRole { role: ApiKeyRole::Admin, at: at() })
            .then_expect_events(vec![MemberEvent::MemberRoleChanged { tenant_id: Uuid::nil(), role: ApiKeyRole::Admin, at: at() }]);
        TestFramework::<Member>::with(())
            .given(vec![invited()])
            .when(MemberCommand::Remove { at: at() })
            .then_expect_events(vec![MemberEvent::MemberRemoved { tenant_id: Uuid::nil(), email_key: "k".into(), removed_at: at() }]);
        TestFramework::<Member>::with(())
            .given(vec![invited(), MemberEvent::MemberRemoved { tenant_id: Uuid::nil(), email_key: "k".into(), removed_at: at() }])
            .when(MemberCommand::ChangeRole { role: ApiKeyRole::Admin, at: at() })
            .then_expect_error(MemberError::InvalidTransition { action: "change the role of", status: MemberStatus::Removed });
        TestFramework::<Member>::with(())
            .given_no_previous_events()
            .when(MemberCommand::Remove { at: at() })
            .then_expect_error(MemberError::NotFound);
    }
}
