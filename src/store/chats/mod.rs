//! Instant messaging storage: chat channels and their health, chats with
//! their IM tasks and transcripts, the events they were built from (a
//! sender's event id has one effect), the Matrix handoff membership, and the
//! keys that sign open-chat handles.
//!
//! Every chat event is applied in one transaction: the chat (created on its
//! first event, locked after), its task (created, or told the customer left),
//! the message, the holders' events, and either the delivery's id with the
//! answer given (webhook, JetStream) or the source's cursor under the
//! owner's fence (Matrix `since`).
//!
//! - `channels`: the channels, their status, counters and cursor;
//! - `customer`: a chat's customer resolved, and what its task keeps of it;
//! - `event`: one chat event applied inside a write transaction;
//! - `sets`: a batch of delivered events applied set-wise (PostgreSQL);
//! - `delivery`: delivered events (webhook, JetStream) applied exactly once;
//! - `batch`: a pulled channel's events (Matrix) committed with its cursor;
//! - `record`: the chat of an IM task;
//! - `transcript`: a chat's lines and an IM task's transcript;
//! - `replies`: agents' replies relayed into their chat;
//! - `handoff`: the Matrix room membership that follows the task's holder;
//! - `handles`: open-chat handles' sessions and signing keys.
mod batch;
mod channels;
mod customer;
mod delivery;
mod event;
mod handles;
mod handoff;
mod record;
mod replies;
mod sets;
mod transcript;

pub use batch::ChatBatch;
pub use channels::{ChannelSpec, ChannelState};
pub use customer::chat_params;
pub(in crate::store) use customer::{better_customer, completed_params};
pub use delivery::{ChatDelivery, Delivered};
pub(crate) use event::sessions_follow_task;
pub use event::{ChatInput, ChatOutcome};
pub use handles::HandleTarget;
pub use handoff::MembershipChange;
pub use record::ChatRecord;
pub use replies::{PendingReply, relay_bell};
pub use transcript::ChatMessage;
pub(in crate::store) use transcript::{chat_message_from_row, message_told, sender_name};
