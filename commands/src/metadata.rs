//! Who did what, why and when: the metadata stamped on every event a command appends.

use std::collections::HashMap;
use std::fmt;

use chrono::{DateTime, SecondsFormat, Utc};
use uuid::Uuid;

/// Who issued a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Actor {
    /// The platform admin token.
    Admin,
    /// A tenant API key, by id.
    ApiKey(Uuid),
    /// The platform itself (the billing run, a webhook), by component name.
    System(&'static str),
}

impl fmt::Display for Actor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Admin => f.write_str("admin"),
            Self::ApiKey(id) => write!(f, "key:{id}"),
            Self::System(name) => write!(f, "system:{name}"),
        }
    }
}

/// The context of one command: on whose behalf, by whom, in answer to what, and when.
#[derive(Debug, Clone)]
pub struct CommandContext {
    /// The tenant the events belong to (`None` for platform-level events).
    pub tenant_id: Option<Uuid>,
    /// Who asked.
    pub actor: Actor,
    /// The request id that started the chain of work (`X-Request-Id`).
    pub correlation_id: String,
    /// The message that directly caused this command (the request, or an event).
    pub causation_id: String,
    /// The instant the command is executed at (from the injected clock).
    pub at: DateTime<Utc>,
    /// The command's name, where a replay needs it (subscription commands: see
    /// `SubscriptionCommand::name`); stored as the metadata's `command`.
    pub command: Option<&'static str>,
}

impl CommandContext {
    /// The same context on behalf of another tenant (a sign-up creates the tenant it is for).
    pub fn for_tenant(&self, tenant_id: Uuid) -> Self {
        Self { tenant_id: Some(tenant_id), ..self.clone() }
    }

    /// The metadata map stored with each event.
    pub fn to_metadata(&self) -> HashMap<String, String> {
        let mut metadata = HashMap::with_capacity(6);
        if let Some(tenant_id) = self.tenant_id {
            metadata.insert("tenant_id".to_owned(), tenant_id.to_string());
        }
        metadata.insert("actor".to_owned(), self.actor.to_string());
        metadata.insert("correlation_id".to_owned(), self.correlation_id.clone());
        metadata.insert("causation_id".to_owned(), self.causation_id.clone());
        metadata.insert("occurred_at".to_owned(), self.at.to_rfc3339_opts(SecondsFormat::Micros, true));
        if let Some(command) = self.command {
            metadata.insert("command".to_owned(), command.to_owned());
        }
        metadata
    }
}
