//! What a chat tells of its customer: resolving them (the one place where
//! this happens), and what an IM task keeps of its chat in its parameters.
use super::event::ChatInput;
use crate::domain::chat::{ChatEvent, CustomerIdentity};
use crate::domain::customer::ResolvedCustomer;
use crate::store::{Store, StoreResult};
use serde_json::{Value, json};

/// What a task's parameters keep of the chat and of everything the channel
/// told about the customer (so no detail is lost, whatever the resolver
/// makes of it).
pub fn chat_params(channel_id: &str, event: &ChatEvent) -> Value {
    let mut p = json!({
        "channel": channel_id,
        "chat_id": event.chat_id,
        "customer": event.customer,
    });
    if let Some(l) = &event.language {
        p["language"] = json!(l);
    }
    if let Some(s) = &event.subject {
        p["subject"] = json!(s);
    }
    if !event.parameters.is_empty() {
        p["parameters"] = Value::Object(event.parameters.clone());
    }
    p
}

/// A task's parameters completed by a start's (a start that finds its
/// chat's task live).
pub(in crate::store) fn completed_params(params: &Value, e: &ChatEvent) -> Value {
    let mut params = params.clone();
    if let (Value::Object(have), Value::Object(more)) = (&mut params, chat_params(&e.channel, e)) {
        have.extend(more);
    }
    params
}

/// The customer a start brings to a task whose customer is anonymous.
pub(in crate::store) fn better_customer(
    input: &ChatInput,
    current: crate::domain::CustomerKind,
) -> Option<&crate::domain::customer::CustomerMatch> {
    input.customer.as_ref().map(|r| &r.matched).filter(|_| {
        current == crate::domain::CustomerKind::Anonymous && !input.event.customer.is_empty()
    })
}

impl Store {
    /// Resolves the customer of a chat, the one place where this happens:
    /// by the best address the channel gave (e-mail, else phone, else the
    /// platform's user id) and the given name.
    pub async fn resolve_chat_customer(
        &self,
        identity: &CustomerIdentity,
        sender_id: Option<&str>,
    ) -> StoreResult<ResolvedCustomer> {
        // The chat platform's user id is the customer's UPN / chat user id:
        // the directory resolves colleagues by it.
        let upn = identity.user_id.as_deref().or(sender_id).map(String::from);
        let full = crate::domain::customer::CustomerIdentity {
            name: identity.name.clone(),
            email: identity.email.clone(),
            phone: identity.phone.clone(),
            upn,
            address: identity.best_address().or(sender_id).map(String::from),
            ..Default::default()
        };
        // Lenient: a malformed field the channel sent is dropped, not fatal.
        let normal = full.normalize(self.default_calling_code(), false, "customer")?;
        self.resolve_identity(&normal).await
    }
}
