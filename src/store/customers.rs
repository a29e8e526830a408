//! Who the customer is: the internal directory (tenant users, and agents by
//! e-mail), the external address book (contacts), bulk imports of both, the
//! contact search, and resolution of an identity at arrival.
use super::rows::{RowExt, contains_regex, like_pattern};
use super::{Contact, DirectoryUser, Store, StoreError, StoreResult, WriteTx, with_pool};
use crate::domain::customer::{
    CustomerDetails, CustomerKind, DirectoryMatch, NormalIdentity, ResolvedCustomer,
    resolve_identity,
};
use crate::domain::now_millis;

fn user_from_row(r: &impl RowExt) -> StoreResult<DirectoryUser> {
    Ok(DirectoryUser {
        id: r.text("id")?,
        name: r.text("name")?,
        email: r.opt_text("email")?,
        phone: r.opt_text("phone")?,
        upn: r.opt_text("upn")?,
        department: r.opt_text("department")?,
    })
}

fn contact_from_row(r: &impl RowExt) -> StoreResult<Contact> {
    Ok(Contact {
        id: r.text("id")?,
        name: r.text("name")?,
        email: r.opt_text("email")?,
        phone: r.opt_text("phone")?,
        company: r.opt_text("company")?,
        postal_address: r.opt_text("postal_address")?,
    })
}

/// Inside a transaction: creates or replaces a directory user (already checked and normalised).
macro_rules! put_user {
    ($tx:expr, $u:expr, $now:expr) => {
        sqlx::query(
            "INSERT INTO directory_users (id, name, email, phone, upn, department, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $7)
             ON CONFLICT (id) DO UPDATE SET name = excluded.name, email = excluded.email,
                phone = excluded.phone, upn = excluded.upn, department = excluded.department,
                updated_at = excluded.updated_at",
        )
        .bind(&$u.id)
        .bind(&$u.name)
        .bind(&$u.email)
        .bind(&$u.phone)
        .bind(&$u.upn)
        .bind(&$u.department)
        .bind($now)
        .execute(&mut *$tx)
        .await?
    };
}

/// Inside a transaction: creates or replaces a contact (already checked and normalised).
macro_rules! put_contact {
    ($tx:expr, $c:expr, $now:expr) => {
        sqlx::query(
            "INSERT INTO contacts (id, name, email, phone, company, postal_address, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $7)
             ON CONFLICT (id) DO UPDATE SET name = excluded.name, email = excluded.email,
                phone = excluded.phone, company = excluded.company,
                postal_address = excluded.postal_address, updated_at = excluded.updated_at",
        )
        .bind(&$c.id)
        .bind(&$c.name)
        .bind(&$c.email)
        .bind(&$c.phone)
        .bind(&$c.company)
        .bind(&$c.postal_address)
        .bind($now)
        .execute(&mut *$tx)
        .await?
    };
}

impl Store {
    /// Creates or replaces directory users, all or none (checked and
    /// normalised by the caller). Returns how many.
    pub async fn upsert_directory_users(&self, users: &[DirectoryUser]) -> StoreResult<usize> {
        let now = now_millis();
        with_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            for u in users {
                put_user!(tx, u, now);
            }
            tx.commit().await?;
        });
        Ok(users.len())
    }

    pub async fn directory_user(&self, id: &str) -> StoreResult<DirectoryUser> {
        with_pool!(self, pool => {
            let row = sqlx::query("SELECT id, name, email, phone, upn, department FROM directory_users WHERE id = $1")
                .bind(id)
                .fetch_optional(pool)
                .await?
                .ok_or_else(|| StoreError::NotFound(format!("directory user '{id}'")))?;
            user_from_row(&row)
        })
    }

    /// Creates or replaces contacts, all or none (checked and normalised by
    /// the caller). Returns how many.
    pub async fn upsert_contacts(&self, contacts: &[Contact]) -> StoreResult<usize> {
        let now = now_millis();
        with_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            for c in contacts {
                put_contact!(tx, c, now);
            }
            tx.commit().await?;
        });
        Ok(contacts.len())
    }

    /// Contacts whose name or e-mail contains `q` (case-insensitively), or
    /// whose phone is `phone` (normalised), by name.
    pub async fn search_contacts(
        &self,
        q: &str,
        phone: Option<&str>,
        limit: u32,
    ) -> StoreResult<Vec<Contact>> {
        let pattern = like_pattern(q.trim());
        // The name as typed in any case, beyond ASCII too.
        // (SQLite's lower() folds ASCII only: a needle beyond it is a
        // REGEXP, which costs more.)
        let (name, name_pattern) = match self {
            Store::Sqlite(..) if !q.is_ascii() => ("name REGEXP $4", contains_regex(q.trim())),
            _ => ("lower(name) LIKE $4 ESCAPE '\\'", pattern.clone()),
        };
        let sql = format!(
            "SELECT id, name, email, phone, company, postal_address FROM contacts
             WHERE {name} OR email LIKE $1 ESCAPE '\\' OR phone = $2
             ORDER BY name, id LIMIT $3"
        );
        with_pool!(self, pool => {
            let rows = sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(&pattern)
            .bind(phone)
            .bind(i64::from(limit))
            .bind(&name_pattern)
            .fetch_all(pool)
            .await?;
            rows.iter().map(contact_from_row).collect()
        })
    }

    /// Resolves a customer at arrival (any modality): the internal directory
    /// by UPN, e-mail or phone (tenant users, then agents by e-mail), then
    /// the address book by e-mail or phone; else anonymous with the known
    /// details.
    pub async fn resolve_identity(
        &self,
        identity: &NormalIdentity,
    ) -> StoreResult<ResolvedCustomer> {
        let d = &identity.details;
        if d.email.is_none() && d.phone.is_none() && d.upn.is_none() {
            return Ok(resolve_identity(identity, None, None));
        }
        // One statement for the three places a customer may be known (each
        // part at most one row, best first): a directory user by UPN, e-mail
        // or phone; an agent by e-mail; a contact by e-mail or phone. The
        // first in that order wins.
        let rows = with_pool!(self, pool => {
            sqlx::query(
                "SELECT CAST(0 AS BIGINT) AS source, id, name, email, phone, upn, CAST(NULL AS TEXT) AS company,
                        CAST(NULL AS TEXT) AS postal_address FROM (
                    SELECT id, name, email, phone, upn FROM directory_users
                    WHERE upn = $1 OR email = $2 OR phone = $3
                    ORDER BY CASE WHEN upn = $1 THEN 0 WHEN email = $2 THEN 1 ELSE 2 END, id LIMIT 1) u
                 UNION ALL
                 SELECT CAST(1 AS BIGINT), id, name, email, CAST(NULL AS TEXT), CAST(NULL AS TEXT), CAST(NULL AS TEXT),
                        CAST(NULL AS TEXT) FROM (
                    SELECT id, name, email FROM agents WHERE lower(email) = $1 OR lower(email) = $2
                    ORDER BY id LIMIT 1) a
                 UNION ALL
                 SELECT CAST(2 AS BIGINT), id, name, email, phone, CAST(NULL AS TEXT), company, postal_address FROM (
                    SELECT id, name, email, phone, company, postal_address FROM contacts
                    WHERE email = $2 OR phone = $3
                    ORDER BY CASE WHEN email = $2 THEN 0 ELSE 1 END, id LIMIT 1) c
                 ORDER BY 1",
            )
            .bind(&d.upn)
            .bind(&d.email)
            .bind(&d.phone)
            .fetch_all(pool)
            .await?
            .iter()
            .map(|r| {
                let source = r.int("source")?;
                Ok::<_, StoreError>((source, DirectoryMatch {
                    id: r.text("id")?,
                    name: r.text("name")?,
                    details: CustomerDetails {
                        email: r.opt_text("email")?,
                        phone: r.opt_text("phone")?,
                        upn: r.opt_text("upn")?,
                        company: r.opt_text("company")?,
                        postal_address: r.opt_text("postal_address")?,
                        ..Default::default()
                    },
                }))
            })
            .collect::<Result<Vec<_>, _>>()?
        });
        let (internal, external) = match rows.into_iter().next() {
            Some((2, contact)) => (None, Some(contact)),
            Some((_, internal)) => (Some(internal), None),
            None => (None, None),
        };
        Ok(resolve_identity(identity, internal, external))
    }

    /// The name the directory (or address book) has now for a matched
    /// customer, if it still has them.
    pub async fn directory_name(
        &self,
        kind: CustomerKind,
        reference: &str,
    ) -> StoreResult<Option<String>> {
        with_pool!(self, pool => {
            let name: Option<String> = match kind {
                CustomerKind::Internal => {
                    let user: Option<String> = sqlx::query_scalar("SELECT name FROM directory_users WHERE id = $1")
                        .bind(reference)
                        .fetch_optional(pool)
                        .await?;
                    match user {
                        Some(n) => Some(n),
                        None => sqlx::query_scalar("SELECT name FROM agents WHERE id = $1")
                            .bind(reference)
                            .fetch_optional(pool)
                            .await?,
                    }
                }
                CustomerKind::External => sqlx::query_scalar("SELECT name FROM contacts WHERE id = $1")
                    .bind(reference)
                    .fetch_optional(pool)
                    .await?,
                CustomerKind::Anonymous => None,
            };
            Ok(name)
        })
    }
}
