//! User sessions: My Sessions, wrap-up and save.
use super::rows::{Arg, Columns, RowExt, bind_all, contains_regex, like_pattern};
use super::{
    QueueStats, Session, SessionFilter, Store, StoreError, StoreResult, WriteTx, with_pool,
    with_reader,
};
use crate::domain::session::check_can_save;
use crate::domain::wrapup::{WrapUp, WrapUpCodes};
use crate::domain::{Modality, SessionResult, SessionState, now_millis};

/// On SQLite the search table's rowid is (agent rowid << 40) + session rowid
/// (migrations/sqlite/0009_session_search.sql).
const SQLITE_ROW_MASK: i64 = (1 << 40) - 1;

/// An FTS5 phrase matching `q` literally (lower-cased like the LIKE pattern).
fn fts_phrase(q: &str) -> String {
    format!("\"{}\"", q.to_lowercase().replace('"', "\"\""))
}

/// Case-insensitive substring of subject, customer name, customer address or
/// one tag: the meaning of `q`, checked on the row itself. Each tag is
/// matched on its own value, never on the JSON text the tags are stored as.
/// `$n` is a `LIKE` pattern ([`like_pattern`]), or with `regex` (SQLite, a
/// needle beyond ASCII) a regular expression ([`contains_regex`]): SQLite's
/// `lower()` and `LIKE` fold ASCII letters only, and `REGEXP` costs more.
fn exact_search(store: &Store, n: usize, regex: bool) -> String {
    let (tag, tag_value) = match store {
        Store::Postgres(..) => (
            "SELECT 1 FROM jsonb_array_elements_text(tags::jsonb) AS tag(v) WHERE",
            "tag.v",
        ),
        Store::Sqlite(..) => ("SELECT 1 FROM json_each(tags) WHERE", "value"),
    };
    if regex {
        format!(
            "(subject REGEXP ${n} OR customer_name REGEXP ${n} OR customer_address REGEXP ${n} \
             OR EXISTS ({tag} {tag_value} REGEXP ${n}))"
        )
    } else {
        format!(
            "(lower(subject) LIKE ${n} ESCAPE '\\' OR lower(customer_name) LIKE ${n} ESCAPE '\\' \
             OR lower(customer_address) LIKE ${n} ESCAPE '\\' \
             OR EXISTS ({tag} lower({tag_value}) LIKE ${n} ESCAPE '\\'))"
        )
    }
}

/// `(a OR b …)`, or `a` alone.
fn any_of(terms: impl Iterator<Item = String>) -> String {
    let terms: Vec<String> = terms.collect();
    if terms.len() == 1 {
        terms.into_iter().next().unwrap_or_default()
    } else {
        format!("({})", terms.join(" OR "))
    }
}

/// The sessions of a task whose part is going on (offered, or accepted and
/// not saved), as a condition on `user_sessions`: the entries that follow
/// what the task learns (its subject, its customer). A part that is over
/// (declined, missed, transferred, saved) keeps what it knew.
pub(crate) const HAS_THE_TASK: &str =
    "state <> 'concluded' AND (result IS NULL OR result = 'accepted')";

/// Read by position in `session_from_row`: add a column there at the same place.
pub(super) const SESSION_COLUMNS: &str = "id, task_id, agent_id, service_id, modality, state, result, created_at, \
     answered_at, ended_at, saved_at, subject, customer_name, customer_address, codes_primary, codes_secondary, tags, \
     expires_at, end_reason";

/// A row of `SESSION_COLUMNS`, read by position in the order selected.
pub(super) fn session_from_row(row: &impl RowExt) -> StoreResult<Session> {
    let mut c = Columns::new(row);
    Ok(Session {
        id: c.text()?,
        task_id: c.text()?,
        agent_id: c.text()?,
        service_id: c.text()?,
        modality: Modality::parse(c.str()?)?,
        state: SessionState::parse(c.str()?)?,
        result: c.opt_str()?.map(SessionResult::parse).transpose()?,
        created_at: c.int()?,
        answered_at: c.opt_int()?,
        ended_at: c.opt_int()?,
        saved_at: c.opt_int()?,
        subject: c.opt_text()?,
        customer_name: c.opt_text()?,
        customer_address: c.opt_text()?,
        wrapup: WrapUp {
            codes: WrapUpCodes {
                primary: c.string_list()?,
                secondary: c.string_list()?,
            },
            tags: c.string_list()?,
        },
        expires_at: c.opt_int()?,
        end_reason: c.opt_text()?,
    })
}

impl Store {
    pub async fn session(&self, id: &str) -> StoreResult<Session> {
        let sql = format!("SELECT {SESSION_COLUMNS} FROM user_sessions WHERE id = $1");
        with_reader!(self, conn => {
            match sqlx::query(sqlx::AssertSqlSafe(sql.as_str())).bind(id).fetch_optional(conn).await? {
                Some(row) => session_from_row(&row),
                None => Err(StoreError::NotFound(format!("session '{id}'"))),
            }
        })
    }

    /// The sessions of one task, oldest first.
    pub async fn task_sessions(&self, task_id: &str) -> StoreResult<Vec<Session>> {
        let sql = format!(
            "SELECT {SESSION_COLUMNS} FROM user_sessions WHERE task_id = $1 ORDER BY created_at, id"
        );
        with_reader!(self, conn => {
            let rows = sqlx::query(sqlx::AssertSqlSafe(sql.as_str())).bind(task_id).fetch_all(conn).await?;
            rows.iter().map(session_from_row).collect()
        })
    }

    /// One agent's sessions, newest first. Only `agent_id`'s rows can come back.
    ///
    /// Every condition is on the agent's own index range, cursor included (a
    /// forged cursor only moves within the caller's own list). A search `q`
    /// is served by an index restricted to the agent's rows (migration 0009):
    /// on PostgreSQL an index-only scan of `user_sessions_agent_search`, whose
    /// entries carry the searched text, picks the page's ids (newest first,
    /// stopping at the limit); on SQLite the FTS5 table `user_sessions_search`
    /// is read in the agent's rowid range only.
    pub async fn my_sessions(
        &self,
        agent_id: &str,
        filter: &SessionFilter,
    ) -> StoreResult<Vec<Session>> {
        let mut cond = String::from("agent_id = $1");
        let mut args = vec![Arg::Text(agent_id.to_string())];
        match filter.live {
            Some(true) => cond.push_str(" AND state <> 'concluded'"),
            Some(false) => cond.push_str(" AND state = 'concluded'"),
            None => {}
        }
        if let Some(m) = filter.modality {
            args.push(Arg::Text(m.as_str().into()));
            cond.push_str(&format!(" AND modality = ${}", args.len()));
        }
        let mut patterns = Vec::new();
        if let Some(q) = filter
            .query
            .as_deref()
            .map(str::trim)
            .filter(|q| !q.is_empty())
        {
            let mut needles = vec![q];
            needles.extend(filter.phone.as_deref().filter(|p| !p.is_empty()));
            patterns = self.push_search(&needles, &mut cond, &mut args);
        }
        let mut after = String::new();
        if let Some(c) = &filter.after {
            args.push(Arg::Int(c.created_at));
            args.push(Arg::Text(c.id.clone()));
            let (a, b) = (args.len() - 1, args.len());
            // A row comparison is an index condition on both backends.
            after = format!(" AND (created_at, id) < (${a}, ${b})");
        }
        args.push(Arg::Int(i64::from(filter.limit)));
        let limit = args.len();
        let order = "ORDER BY created_at DESC, id DESC";
        let sql = if patterns.is_empty() {
            format!(
                "SELECT {SESSION_COLUMNS} FROM user_sessions WHERE {cond}{after} {order} LIMIT ${limit}"
            )
        } else {
            // The page's ids from the index alone (with those of the rare
            // rows whose search text was cut, checked on the row: their own
            // small index), then each row by its key, in the index's order
            // (a nested loop: no hashing, no sort).
            let like = any_of(patterns.iter().map(|n| format!("search_text LIKE ${n}")));
            let exact = any_of(patterns.iter().map(|&n| exact_search(self, n, false)));
            format!(
                "SELECT s.* FROM ((SELECT id, created_at FROM user_sessions \
                 WHERE {cond} AND {like}{after} {order} LIMIT ${limit}) \
                 UNION ALL (SELECT id, created_at FROM user_sessions WHERE {cond} AND search_clipped \
                 AND NOT ({like}) AND {exact}{after} {order} LIMIT ${limit}) \
                 {order} LIMIT ${limit}) m CROSS JOIN LATERAL (SELECT {SESSION_COLUMNS} \
                 FROM user_sessions WHERE id = m.id AND agent_id = $1) s \
                 ORDER BY m.created_at DESC, m.id DESC"
            )
        };
        // On a connection of the read lane (PostgreSQL).
        with_reader!(self, conn => {
            let rows = bind_all!(sqlx::query(sqlx::AssertSqlSafe(sql.as_str())), &args).fetch_all(conn).await?;
            rows.iter().map(session_from_row).collect()
        })
    }

    /// Adds the condition of a search for any of `needles` (the query, and
    /// its phone-number form) to a `my_sessions` query whose `$1` is the
    /// agent, or, on PostgreSQL, returns the parameters of their patterns
    /// for a query that picks ids first (from the covering index).
    ///
    /// PostgreSQL: `search_text` (a generated column: subject, customer name,
    /// customer address and tags, lower-cased, one per line, each cut to its
    /// first bytes so that the entry fits a btree page, migration 15) is in
    /// the agent index's entries, so `search_text LIKE` is checked there;
    /// rows whose text was cut (`search_clipped`, rare) are also checked
    /// field by field. A match cannot span two fields unless `q` holds a line
    /// break; such a `q` is checked field by field on the rows.
    /// SQLite: the FTS5 trigram table gives the agent's rows holding the
    /// text (needles of three characters or more); the agent's rows are read
    /// newest first and those in that set checked exactly until the page is
    /// full; a shorter needle scans the agent's rows.
    fn push_search(&self, needles: &[&str], cond: &mut String, args: &mut Vec<Arg>) -> Vec<usize> {
        // Each needle's parameter, and whether it is a regular expression.
        let mut patterns = Vec::with_capacity(needles.len());
        for q in needles {
            let regex = matches!(self, Store::Sqlite(..)) && !q.is_ascii();
            args.push(Arg::Text(if regex {
                contains_regex(q)
            } else {
                like_pattern(q)
            }));
            patterns.push((args.len(), regex));
        }
        let exact = || {
            any_of(
                patterns
                    .iter()
                    .map(|&(n, regex)| exact_search(self, n, regex)),
            )
        };
        match self {
            // `search_text LIKE $n` with no `ESCAPE`: backslash is
            // PostgreSQL's default escape, and the clause would make a
            // generic plan run `like_escape` on every entry it checks.
            Store::Postgres(..) if !needles.iter().any(|q| q.contains('\n')) => {
                patterns.iter().map(|&(n, _)| n).collect()
            }
            Store::Sqlite(..) if needles.iter().all(|q| q.chars().count() >= 3) => {
                let phrases: Vec<String> = needles.iter().map(|q| fts_phrase(q)).collect();
                args.push(Arg::Text(phrases.join(" OR ")));
                let m = args.len();
                // `+rowid`: the matches are a set to test the agent's rows
                // against, read newest first from their index until the page
                // is full; not rows to fetch one by one and then sort (which
                // read every match of the agent: 10 ms for a text all of
                // their sessions hold, 3 ms for one in a fifth, 1M sessions).
                cond.push_str(&format!(
                    " AND +rowid IN (SELECT rowid & {SQLITE_ROW_MASK} FROM user_sessions_search \
                     WHERE user_sessions_search MATCH ${m} \
                     AND rowid BETWEEN (SELECT rowid FROM agents WHERE id = $1) << 40 \
                     AND ((SELECT rowid FROM agents WHERE id = $1) << 40) + {SQLITE_ROW_MASK}) \
                     AND {}",
                    exact()
                ));
                Vec::new()
            }
            _ => {
                cond.push_str(&format!(" AND {}", exact()));
                Vec::new()
            }
        }
    }

    /// Replaces a live session's wrap-up (already validated against the
    /// catalog). With `based_on` (a [`WrapUp::fingerprint`]), only if the
    /// codes and tags stored are still those: the check and the write are
    /// one transaction, with the row locked, so two tabs saving at once
    /// cannot both pass it ([`StoreError::Stale`], code `wrapup_changed`).
    pub async fn set_wrapup(
        &self,
        session_id: &str,
        wrapup: &WrapUp,
        based_on: Option<&str>,
    ) -> StoreResult<Session> {
        let json = |v: &Vec<String>| serde_json::to_string(v).unwrap_or_else(|_| "[]".into());
        let lock = match self {
            Store::Postgres(..) => " FOR UPDATE",
            Store::Sqlite(..) => "",
        };
        with_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            let sql = format!("SELECT {SESSION_COLUMNS} FROM user_sessions WHERE id = $1{lock}");
            let current = match sqlx::query(sqlx::AssertSqlSafe(sql)).bind(session_id).fetch_optional(&mut *tx).await? {
                Some(row) => session_from_row(&row)?,
                None => return Err(StoreError::NotFound(format!("session '{session_id}'"))),
            };
            if let Some(why) = current.wrapup_closed() {
                return Err(StoreError::Conflict(why));
            }
            if based_on.is_some_and(|expected| expected != current.wrapup.fingerprint()) {
                return Err(StoreError::wrapup_changed());
            }
            sqlx::query(
                "UPDATE user_sessions SET codes_primary = $1, codes_secondary = $2, tags = $3, updated_at = $4
                 WHERE id = $5",
            )
            .bind(json(&wrapup.codes.primary))
            .bind(json(&wrapup.codes.secondary))
            .bind(json(&wrapup.tags))
            .bind(now_millis())
            .bind(session_id)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
        });
        self.session(session_id).await
    }

    /// Concludes a session in wrap-up: from now on the database refuses any
    /// change to it. Concludes the task too when it was its last open session
    /// (a part transferred away is saved on its own and holds nothing open).
    pub async fn save_session(&self, session_id: &str) -> StoreResult<Session> {
        let now = now_millis();
        let told = with_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            let sql = format!("SELECT {SESSION_COLUMNS} FROM user_sessions WHERE id = $1");
            let session = match sqlx::query(sqlx::AssertSqlSafe(sql.as_str())).bind(session_id).fetch_optional(&mut *tx).await? {
                Some(row) => session_from_row(&row)?,
                None => return Err(StoreError::NotFound(format!("session '{session_id}'"))),
            };
            check_can_save(session.state, session.saved_at.is_some())
                .map_err(|e| StoreError::Conflict(e.to_string()))?;
            // The task's changes are written under its lock, so they keep their order.
            let task = super::offers::lock_task!(self, tx, &session.task_id)
                .ok_or_else(|| StoreError::NotFound(format!("task '{}'", session.task_id)))?;
            let done = sqlx::query(
                "UPDATE user_sessions SET state = 'concluded', saved_at = $1, ended_at = COALESCE(ended_at, $1), updated_at = $1
                 WHERE id = $2 AND state = 'wrap_up'",
            )
            .bind(now)
            .bind(session_id)
            .execute(&mut *tx)
            .await?;
            if done.rows_affected() != 1 {
                return Err(StoreError::Conflict(format!("session '{session_id}' is already saved")));
            }
            // Parts that were transferred away do not hold the task open:
            // it is concluded when its last holder saves.
            let open: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM user_sessions WHERE task_id = $1 AND state <> 'concluded'
                   AND (result IS NULL OR result <> 'transferred')",
            )
            .bind(&session.task_id)
            .fetch_one(&mut *tx)
            .await?;
            super::offers::record_task_change!(tx, &session.task_id, "session.saved", Some(session_id), Some(session.agent_id.as_str()),
                // The part's own service (the task may have moved on since)
                // and its wrap-up, for reports.
                super::offers::change_payload(&task, task.state, serde_json::json!({
                    "session_id": session_id, "agent": session.agent_id, "result": session.result,
                    "service": session.service_id, "task_service": task.service_id,
                    "codes": session.wrapup.codes, "tags": session.wrapup.tags,
                })), now);
            let mut state_after = task.state;
            if open == 0 {
                let concluded = sqlx::query(
                    "UPDATE tasks SET state = 'concluded', updated_at = $1, ended_at = COALESCE(ended_at, $1)
                     WHERE id = $2 AND state = 'wrap_up'",
                )
                .bind(now)
                .bind(&session.task_id)
                .execute(&mut *tx)
                .await?;
                if concluded.rows_affected() == 1 {
                    state_after = crate::domain::TaskState::Concluded;
                    super::offers::record_task_change!(tx, &session.task_id, "task.concluded", None::<&str>, None::<&str>,
                        super::offers::change_payload(&task, crate::domain::TaskState::Concluded, serde_json::json!({})), now);
                }
            }
            // Every page of the agent's shows the part as saved.
            let mut tell = super::offers::Tell::default();
            tell.push(&session.agent_id, crate::domain::event::AgentEventKind::Task, &session.task_id,
                serde_json::json!({"task_id": session.task_id, "session_id": session_id, "state": state_after, "reason": "saved"}));
            let told = super::offers::write_tell!(self, tx, tell, now);
            tx.commit().await?;
            told
        });
        self.ring_agents(&told);
        self.ring_webhooks();
        self.session(session_id).await
    }

    /// Counts for the metrics endpoint.
    pub async fn queue_stats(&self) -> StoreResult<QueueStats> {
        with_pool!(self, pool => {
            let rows = sqlx::query(
                "SELECT service_id, state, count(*) AS n FROM tasks
                 WHERE state NOT IN ('concluded', 'cancelled') GROUP BY service_id, state ORDER BY service_id, state",
            )
            .fetch_all(pool)
            .await?;
            let mut stats = QueueStats::default();
            for r in &rows {
                stats.tasks.push((r.text("service_id")?, r.text("state")?, r.int("n")?));
            }
            let rows = sqlx::query(
                "SELECT COALESCE(result, 'open') AS result, count(*) AS n FROM user_sessions GROUP BY COALESCE(result, 'open') ORDER BY 1",
            )
            .fetch_all(pool)
            .await?;
            for r in &rows {
                stats.sessions.push((r.text("result")?, r.int("n")?));
            }
            Ok(stats)
        })
    }
}

impl StoreError {
    /// A wrap-up change based on codes and tags that changed meanwhile.
    pub fn wrapup_changed() -> StoreError {
        StoreError::Stale {
            code: "wrapup_changed",
            message: "the codes and tags were changed meanwhile (in another tab or window): load them again".into(),
        }
    }
}
