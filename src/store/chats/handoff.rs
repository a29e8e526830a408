//! The Matrix handoff: agents' Matrix user ids, and each room's agent
//! membership following its task's holder.
use crate::domain::TaskState;
use crate::domain::chat::{Membership, desired_membership};
use crate::domain::now_millis;
use crate::store::ownership::Fence;
use crate::store::{Store, StoreResult, with_pool};

/// A Matrix room whose agent membership differs from what its task wants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MembershipChange {
    pub chat: String,
    pub room_id: String,
    /// Who was invited last (to remove, if another agent should be in).
    pub member_agent: Option<String>,
    pub member_user: Option<String>,
    /// Who should be in now (`None`: nobody).
    pub want_agent: Option<String>,
    /// Their Matrix user id (`None` when they have none configured).
    pub want_user: Option<String>,
    /// The task is over (concluded or cancelled): the member is removed
    /// because nothing is left for them in the room.
    pub task_over: bool,
}

/// A room, its member, its task's state, holder and the holder's Matrix id.
type MemberRow = (
    String,
    String,
    Option<String>,
    Option<String>,
    String,
    Option<String>,
    Option<String>,
);

impl Store {
    /// Agents' Matrix user ids: user id → agent id.
    pub async fn agent_matrix_users(
        &self,
    ) -> StoreResult<std::collections::HashMap<String, String>> {
        let rows: Vec<(String, String)> = with_pool!(self, pool => {
            sqlx::query_as("SELECT matrix_user_id, id FROM agents WHERE matrix_user_id IS NOT NULL")
                .fetch_all(pool)
                .await?
        });
        Ok(rows.into_iter().collect())
    }

    /// Sets an agent's Matrix user id (the handoff invites it).
    pub async fn set_agent_matrix_user(
        &self,
        agent_id: &str,
        user: Option<&str>,
    ) -> StoreResult<()> {
        with_pool!(self, pool => {
            sqlx::query("UPDATE agents SET matrix_user_id = $2 WHERE id = $1")
                .bind(agent_id)
                .bind(user)
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    /// An agent's Matrix user id, if set.
    pub async fn agent_matrix_user(&self, agent_id: &str) -> StoreResult<Option<String>> {
        with_pool!(self, pool => {
            let v: Option<Option<String>> = sqlx::query_scalar("SELECT matrix_user_id FROM agents WHERE id = $1")
                .bind(agent_id)
                .fetch_optional(pool)
                .await?;
            Ok(v.flatten())
        })
    }

    /// The rooms of a channel whose agent membership differs from what
    /// their live task wants ([`desired_membership`]): read from state, so
    /// it is right whatever order changes committed in.
    pub async fn membership_changes(&self, channel_id: &str) -> StoreResult<Vec<MembershipChange>> {
        let rows: Vec<MemberRow> = with_pool!(self, pool => {
            sqlx::query_as(
                "SELECT c.id, c.external_id, c.member_agent, c.member_user, t.state AS task_state,
                        h.agent_id AS holder, a.matrix_user_id AS holder_user
                 FROM chats c JOIN tasks t ON t.id = c.task_id
                 LEFT JOIN user_sessions h ON h.task_id = t.id AND h.state = 'connected'
                 LEFT JOIN agents a ON a.id = h.agent_id
                 WHERE c.channel_id = $1 AND (t.state IN ('queued', 'offered', 'connected')
                    OR (t.state IN ('concluded', 'cancelled') AND c.member_agent IS NOT NULL AND c.state <> 'ended'))
                 ORDER BY c.id",
            )
            .bind(channel_id)
            .fetch_all(pool)
            .await?
        });
        let mut out = Vec::new();
        for (chat, room_id, member_agent, member_user, state, holder, holder_user) in rows {
            let state = TaskState::parse(&state)?;
            let (want_agent, want_user) = match desired_membership(state, holder.as_deref()) {
                Membership::Keep => continue,
                Membership::Nobody => (None, None),
                Membership::Holder(h) => (Some(h), holder_user),
            };
            if want_agent == member_agent {
                continue;
            }
            out.push(MembershipChange {
                chat,
                room_id,
                member_agent,
                member_user,
                want_agent,
                want_user,
                task_over: state.is_final(),
            });
        }
        Ok(out)
    }

    /// An agent's Matrix account `user` left room `room` of channel
    /// `channel_id` (left, declined the invite, was removed): if the room's
    /// recorded member is that account, it is cleared (only while `fence`
    /// is current), so that the handoff invites the task's holder again, once
    /// per leave seen. Whether a member was cleared.
    pub async fn agent_left_room(
        &self,
        channel_id: &str,
        fence: &Fence,
        room: &str,
        user: &str,
    ) -> StoreResult<bool> {
        let n = with_pool!(self, pool => {
            sqlx::query(
                "UPDATE chats SET member_agent = NULL, member_user = NULL, updated_at = $5
                 WHERE channel_id = $1 AND external_id = $2 AND member_user = $3
                 AND EXISTS (SELECT 1 FROM ownership o WHERE o.kind = $4 AND o.id = chats.channel_id AND o.epoch = $6)",
            )
            .bind(channel_id)
            .bind(room)
            .bind(user)
            .bind(&fence.kind)
            .bind(now_millis())
            .bind(fence.epoch)
            .execute(pool)
            .await?
            .rows_affected()
        });
        Ok(n > 0)
    }

    /// Records who is in a room now (only while `fence` is current).
    pub async fn set_chat_member(
        &self,
        chat: &str,
        fence: &Fence,
        agent: Option<&str>,
        user: Option<&str>,
    ) -> StoreResult<bool> {
        let n = with_pool!(self, pool => {
            sqlx::query(
                "UPDATE chats SET member_agent = $4, member_user = $5, updated_at = $6 WHERE id = $1
                 AND EXISTS (SELECT 1 FROM ownership o WHERE o.kind = $2 AND o.id = chats.channel_id AND o.epoch = $3)",
            )
            .bind(chat)
            .bind(&fence.kind)
            .bind(fence.epoch)
            .bind(agent)
            .bind(user)
            .bind(now_millis())
            .execute(pool)
            .await?
            .rows_affected()
        });
        Ok(n == 1)
    }
}
