//! Members (seats): invitations sealed with the tenant's key and limited by the seats its
//! subscription allows, enforced by the event store atomically with the append
//! (`migrations/0011_members.sql`). With `auto_add_seats`, an invitation beyond the seats adds
//! one to the subscription (prorated on the next invoice) and is tried again.

use std::sync::Arc;

use domain::member::{Invitation, Member, MemberCommand, MemberError};
use domain::subscription::{SubscriptionCommand, SubscriptionError};
use domain::tenant::ApiKeyRole;
use domain::values::{DisplayName, Email};
use uuid::Uuid;

use crate::subscriptions::Subscriptions;
use crate::vault::Vault;
use crate::{AggregateStore, CommandContext, CommandError, Committed};

/// How many times an invitation adds a seat and tries again before giving up (others kept
/// taking the seats it added).
const SEAT_ATTEMPTS: usize = 5;

/// The member command service.
pub struct Members {
    vault: Vault,
    store: AggregateStore<Member>,
    subscriptions: Arc<Subscriptions>,
}

impl Members {
    /// The service over the members' store and the subscriptions (for seats).
    pub fn new(vault: Vault, store: AggregateStore<Member>, subscriptions: Arc<Subscriptions>) -> Self {
        Self { vault, store, subscriptions }
    }

    /// Invites `email` to `tenant_id`'s team (its subscription is `subscription_id`).
    pub async fn invite(
        &self,
        tenant_id: Uuid,
        subscription_id: Uuid,
        email: Email,
        name: Option<DisplayName>,
        role: ApiKeyRole,
        context: &CommandContext,
    ) -> Result<(Uuid, Committed<Member>), CommandError<MemberError>> {
        let internal = |e: &dyn std::fmt::Display| CommandError::Internal(e.to_string());
        let key = self.vault.key_for_writing(tenant_id).await.map_err(|e| internal(&e))?;
        let email_key = key.digest(&email.as_str().to_lowercase()).ok_or_else(|| internal(&"the tenant's personal data was erased"))?;
        let sealed_email = key.seal(email.as_str()).map_err(|e| internal(&e))?;
        let sealed_name = name.map(|n| key.seal(n.as_str())).transpose().map_err(|e| internal(&e))?;
        let id = Uuid::now_v7();
        let mut added = 0;
        loop {
            let subscription = self
                .subscriptions
                .load(subscription_id)
                .await
                .map_err(|e| internal(&e))?
                .ok_or_else(|| internal(&"the tenant has no subscription"))?;
            let invitation = Invitation {
                tenant_id,
                email: sealed_email.clone(),
                email_key: email_key.clone(),
                name: sealed_name.clone(),
                role,
                seat_limit: subscription.seat_limit(),
                at: context.at,
            };
            match self.store.execute_new(&id.to_string(), MemberCommand::Invite(Box::new(invitation)), context).await {
                Err(CommandError::Store(r))
                    if r.code == "QUOTA_EXCEEDED" && subscription.addons.auto_add_seats && added < SEAT_ATTEMPTS =>
                {
                    added += 1;
                    let add = SubscriptionCommand::AddSeat { at: context.at };
                    self.subscriptions.execute(subscription_id, add, context).await.map_err(|e| match e {
                        CommandError::Domain(SubscriptionError::InvalidTransition { .. }) => CommandError::Store(r.clone()),
                        other => internal(&other),
                    })?;
                }
                outcome => return outcome.map(|committed| (id, committed)),
            }
        }
    }

    /// Runs a command on `tenant_id`'s member `id` (another tenant's member is not found).
    pub async fn execute(
        &self,
        tenant_id: Uuid,
        id: Uuid,
        command: MemberCommand,
        context: &CommandContext,
    ) -> Result<Committed<Member>, CommandError<MemberError>> {
        match self.store.load(&id.to_string()).await? {
            Some((member, _)) if member.tenant_id == Some(tenant_id) => {}
            _ => return Err(CommandError::Domain(MemberError::NotFound)),
        }
        self.store.execute(&id.to_string(), command, context).await
    }
}
