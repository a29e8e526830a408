//! The directory: services and their code catalogs, agents, external contacts,
//! and customer resolution against them.
use super::rows::RowExt;
use super::{
    Agent, AgentUpsert, Contact, Store, StoreError, StoreResult, WriteTx, conflict_on_unique,
    with_pool,
};
use crate::domain::customer::{self, normalize_address};
use crate::domain::now_millis;
use crate::domain::service::{Service, ServiceSettings};
use crate::domain::wrapup::{CatalogCode, CodeKind};

fn agent_from_row(row: &impl RowExt, services: Vec<String>) -> StoreResult<Agent> {
    Ok(Agent {
        id: row.text("id")?,
        name: row.text("name")?,
        email: row.text("email")?,
        admin: row.flag("admin")?,
        supervisor: row.flag("supervisor")?,
        presence: row.text("presence")?,
        capacity: row.json("capacity")?,
        services,
    })
}

impl Store {
    /// Creates or replaces a service (its settings and own addresses), and its
    /// code catalog when `codes` is given.
    pub async fn upsert_service(
        &self,
        service: &Service,
        codes: Option<&[CatalogCode]>,
    ) -> StoreResult<()> {
        let now = now_millis();
        let addresses =
            serde_json::to_string(&service.email_addresses).unwrap_or_else(|_| "[]".into());
        let settings = serde_json::to_string(&service.settings).unwrap_or_else(|_| "{}".into());
        with_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            sqlx::query(
                "INSERT INTO services (id, name, email_addresses, settings, created_at, updated_at)
                 VALUES ($1, $2, $3, $4, $5, $5)
                 ON CONFLICT (id) DO UPDATE SET name = excluded.name,
                    email_addresses = excluded.email_addresses, settings = excluded.settings,
                    updated_at = excluded.updated_at, deleted_at = NULL",
            )
            .bind(&service.id)
            .bind(&service.name)
            .bind(&addresses)
            .bind(&settings)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            if let Some(codes) = codes {
                // Codes no longer listed are retired, not deleted: saved sessions refer to them.
                sqlx::query("UPDATE service_codes SET active = FALSE WHERE service_id = $1")
                    .bind(&service.id)
                    .execute(&mut *tx)
                    .await?;
                for c in codes {
                    sqlx::query(
                        "INSERT INTO service_codes (service_id, code, label, kind, active)
                         VALUES ($1, $2, $3, $4, $5)
                         ON CONFLICT (service_id, code) DO UPDATE SET label = excluded.label,
                            kind = excluded.kind, active = excluded.active",
                    )
                    .bind(&service.id)
                    .bind(&c.code)
                    .bind(&c.label)
                    .bind(c.kind.as_str())
                    .bind(c.active)
                    .execute(&mut *tx)
                    .await?;
                }
            }
            tx.commit().await?;
        });
        Ok(())
    }

    /// A service with its active code catalog.
    pub async fn service(&self, id: &str) -> StoreResult<Service> {
        with_pool!(self, pool => {
            let row = sqlx::query("SELECT id, name, email_addresses, settings FROM services WHERE id = $1 AND deleted_at IS NULL")
                .bind(id)
                .fetch_optional(pool)
                .await?
                .ok_or_else(|| StoreError::NotFound(format!("service '{id}'")))?;
            let code_rows = sqlx::query(
                "SELECT code, label, kind, active FROM service_codes WHERE service_id = $1 AND active = TRUE ORDER BY code",
            )
            .bind(id)
            .fetch_all(pool)
            .await?;
            let mut codes = Vec::with_capacity(code_rows.len());
            for r in &code_rows {
                codes.push(CatalogCode {
                    code: r.text("code")?,
                    label: r.text("label")?,
                    kind: CodeKind::parse(&r.text("kind")?)?,
                    active: r.flag("active")?,
                });
            }
            let settings: ServiceSettings = row.json("settings")?;
            Ok(Service {
                id: row.text("id")?,
                name: row.text("name")?,
                email_addresses: row.json("email_addresses")?,
                settings,
                codes,
            })
        })
    }

    /// Every service's own addresses (removed services' too): a reply goes
    /// to none of them, whichever service a task belongs to now (it may have
    /// come in through another's mailbox before a transfer).
    pub async fn own_addresses(&self) -> StoreResult<Vec<String>> {
        let lists: Vec<String> = with_pool!(self, pool => {
            sqlx::query_scalar("SELECT email_addresses FROM services")
                .fetch_all(pool)
                .await?
        });
        Ok(lists
            .iter()
            .filter_map(|l| serde_json::from_str::<Vec<String>>(l).ok())
            .flatten()
            .collect())
    }

    /// The ids of every service.
    pub async fn service_ids(&self) -> StoreResult<Vec<String>> {
        with_pool!(self, pool => {
            Ok(sqlx::query_scalar::<_, String>("SELECT id FROM services WHERE deleted_at IS NULL ORDER BY id").fetch_all(pool).await?)
        })
    }

    /// Creates or replaces an agent and their service memberships.
    /// Answers how many offers went back because the agent left their service.
    pub async fn upsert_agent(&self, agent: &AgentUpsert) -> StoreResult<usize> {
        let now = now_millis();
        let capacity = serde_json::to_string(&agent.capacity).unwrap_or_else(|_| "{}".into());
        with_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            sqlx::query(
                "INSERT INTO agents (id, name, email, token_hash, admin, capacity, created_at, updated_at, supervisor)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $7, $8)
                 ON CONFLICT (id) DO UPDATE SET name = excluded.name, email = excluded.email,
                    token_hash = COALESCE(excluded.token_hash, agents.token_hash),
                    admin = excluded.admin, capacity = excluded.capacity, updated_at = excluded.updated_at,
                    supervisor = excluded.supervisor",
            )
            .bind(&agent.id)
            .bind(&agent.name)
            .bind(agent.email.trim().to_lowercase())
            .bind(&agent.token_hash)
            .bind(agent.admin)
            .bind(&capacity)
            .bind(now)
            .bind(agent.supervisor)
            .execute(&mut *tx)
            .await
            .map_err(|e| conflict_on_unique(e, "this token is already used by another agent"))?;
            sqlx::query("DELETE FROM agent_services WHERE agent_id = $1")
                .bind(&agent.id)
                .execute(&mut *tx)
                .await?;
            for s in &agent.services {
                let exists: Option<String> = sqlx::query_scalar("SELECT id FROM services WHERE id = $1")
                    .bind(s)
                    .fetch_optional(&mut *tx)
                    .await?;
                if exists.is_none() {
                    return Err(StoreError::NotFound(format!("service '{s}'")));
                }
                sqlx::query("INSERT INTO agent_services (agent_id, service_id) VALUES ($1, $2)")
                    .bind(&agent.id)
                    .bind(s)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
        });
        // Offers of services the agent left go back to their queues.
        self.withdraw_offers_outside_services(&agent.id).await
    }

    async fn agent_where(&self, column: &str, value: &str) -> StoreResult<Option<Agent>> {
        let sql = format!(
            "SELECT id, name, email, admin, supervisor, presence, capacity FROM agents WHERE {column} = $1"
        );
        with_pool!(self, pool => {
            let Some(row) = sqlx::query(sqlx::AssertSqlSafe(sql.as_str())).bind(value).fetch_optional(pool).await? else {
                return Ok(None);
            };
            let id = row.text("id")?;
            let services: Vec<String> = sqlx::query_scalar(
                "SELECT service_id FROM agent_services WHERE agent_id = $1 ORDER BY service_id",
            )
            .bind(&id)
            .fetch_all(pool)
            .await?;
            Ok(Some(agent_from_row(&row, services)?))
        })
    }

    /// The agent whose token hashes to `token_hash`.
    pub async fn agent_by_token_hash(&self, token_hash: &str) -> StoreResult<Option<Agent>> {
        self.agent_where("token_hash", token_hash).await
    }

    pub async fn agent(&self, id: &str) -> StoreResult<Agent> {
        self.agent_where("id", id)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("agent '{id}'")))
    }

    /// Creates or replaces an external contact; email and phone are
    /// normalised for matching (a national number without a calling code
    /// stays as written: the API normalises with the configured one first).
    pub async fn upsert_contact(&self, contact: &Contact) -> StoreResult<()> {
        let mut c = contact.clone();
        c.email = contact.email.as_deref().map(normalize_address);
        c.phone = contact.phone.as_deref().map(|p| {
            crate::domain::phone::normalize_phone(p, None).unwrap_or_else(|_| normalize_address(p))
        });
        self.upsert_contacts(std::slice::from_ref(&c)).await?;
        Ok(())
    }

    pub async fn contact(&self, id: &str) -> StoreResult<Contact> {
        with_pool!(self, pool => {
            let row = sqlx::query("SELECT id, name, email, phone, company, postal_address FROM contacts WHERE id = $1")
                .bind(id)
                .fetch_optional(pool)
                .await?
                .ok_or_else(|| StoreError::NotFound(format!("contact '{id}'")))?;
            Ok(Contact {
                id: row.text("id")?,
                name: row.text("name")?,
                email: row.opt_text("email")?,
                phone: row.opt_text("phone")?,
                company: row.opt_text("company")?,
                postal_address: row.opt_text("postal_address")?,
            })
        })
    }

    /// Resolves a customer at arrival from the address the channel gives (an
    /// e-mail address or a phone number) and a name: a thin wrapper over
    /// [`Store::resolve_identity`], for channels that know only these two.
    pub async fn resolve_customer(
        &self,
        address: Option<&str>,
        name: Option<&str>,
    ) -> StoreResult<customer::ResolvedCustomer> {
        let identity = customer::CustomerIdentity {
            address: address.map(String::from),
            name: name.map(String::from),
            ..Default::default()
        }
        .normalize(None, false, "customer")?;
        self.resolve_identity(&identity).await
    }

    /// The service's overrides of the reply templates, by template name.
    pub async fn reply_templates(
        &self,
        service_id: &str,
    ) -> StoreResult<std::collections::HashMap<String, String>> {
        with_pool!(self, pool => {
            let text: Option<String> = sqlx::query_scalar("SELECT reply_templates FROM services WHERE id = $1")
                .bind(service_id)
                .fetch_optional(pool)
                .await?;
            let text = text.ok_or_else(|| StoreError::NotFound(format!("service '{service_id}'")))?;
            serde_json::from_str(&text).map_err(|e| StoreError::Corrupt(format!("reply templates of '{service_id}': {e}")))
        })
    }

    /// Replaces the service's reply template overrides (validated by the caller).
    pub async fn set_reply_templates(
        &self,
        service_id: &str,
        templates: &std::collections::HashMap<String, String>,
    ) -> StoreResult<()> {
        let text = serde_json::to_string(templates).unwrap_or_else(|_| "{}".into());
        let n = with_pool!(self, pool => {
            sqlx::query("UPDATE services SET reply_templates = $2, updated_at = $3 WHERE id = $1")
                .bind(service_id)
                .bind(&text)
                .bind(now_millis())
                .execute(pool)
                .await?
                .rows_affected()
        });
        if n == 1 {
            Ok(())
        } else {
            Err(StoreError::NotFound(format!("service '{service_id}'")))
        }
    }
}
