//! My Sessions search and paging: the search index stays right as sessions
//! are inserted and updated, and neither a search nor a cursor ever reaches
//! another agent's rows. On SQLite and on PostgreSQL.
mod support;

use reqwest::StatusCode;
use serde_json::{Value, json};
use support::app::{ALICE, BOB, Db, TestApp};
use switchboard::domain::cursor::Cursor;

fn ids(body: &Value) -> Vec<String> {
    body["items"]
        .as_array()
        .unwrap_or_else(|| panic!("items in {body}"))
        .iter()
        .map(|s| s["id"].as_str().unwrap_or_default().to_string())
        .collect()
}

fn agents(body: &Value) -> Vec<String> {
    body["items"]
        .as_array()
        .unwrap_or_else(|| panic!("items in {body}"))
        .iter()
        .map(|s| s["agent_id"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// `GET /api/v1/me/sessions?q=…` as `token`, the query URL-encoded.
async fn search(app: &TestApp, token: &str, q: &str) -> Value {
    let url =
        reqwest::Url::parse_with_params("http://x/api/v1/me/sessions", &[("q", q)]).expect("url");
    let path = format!("{}?{}", url.path(), url.query().unwrap_or_default());
    let (s, b) = app.get(token, &path).await;
    assert_eq!(s, StatusCode::OK, "q={q:?}: {b}");
    b
}

/// A task of `subject` from `address`, picked up and handled by `token` (so
/// that capacity allows the next): the session id.
async fn session_of(app: &TestApp, token: &str, subject: &str, address: &str) -> String {
    let task = app.new_task("email", subject, address).await;
    let session = app.pickup(token, &task).await;
    let (s, b) = app
        .post(token, &format!("/api/v1/tasks/{task}/handled"), Value::Null)
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    session
}

async fn search_follows_inserts_and_updates(db: Db) {
    let app = TestApp::spawn(db).await;
    let refund = session_of(&app, ALICE, "Refund request 1", "ann@customer.example").await;
    let parcel = session_of(&app, ALICE, "Parcel lost", "refund.desk@shop.example").await;
    let other = session_of(&app, ALICE, "Invoice copy", "zoe@customer.example").await;
    let bobs = session_of(&app, BOB, "Refund for Bob", "refund@bob.example").await;

    // Subject and customer address, any case; never Bob's row.
    let b = search(&app, ALICE, "REFUND").await;
    assert_eq!(ids(&b), vec![parcel.clone(), refund.clone()]);
    let b = search(&app, BOB, "refund").await;
    assert_eq!(ids(&b), vec![bobs.clone()]);

    // An update of the wrap-up is searchable at once, and so is its removal.
    let (s, b) = app
        .put(
            ALICE,
            &format!("/api/v1/sessions/{other}/wrapup"),
            json!({"tags": ["Escalated to billing"]}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(
        ids(&search(&app, ALICE, "escalated to").await),
        vec![other.clone()]
    );
    assert_eq!(
        ids(&search(&app, BOB, "escalated").await),
        Vec::<String>::new()
    );
    // Tags are searched by their words, never by the JSON text they are
    // stored as: its quotes, brackets and commas match nothing, a match
    // never spans two tags, and a tag's own quote is found as typed.
    let (s, b) = app
        .put(
            ALICE,
            &format!("/api/v1/sessions/{other}/wrapup"),
            json!({"tags": ["Escalated to billing", "say \"hi\"", "VIP"]}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    for q in [
        "[",
        "]",
        ",",
        "\"]",
        "[\"",
        "\",\"",
        "billing\",",
        "billing\nsay",
        "\\\"",
    ] {
        assert_eq!(
            ids(&search(&app, ALICE, q).await),
            Vec::<String>::new(),
            "{q:?}"
        );
    }
    for q in ["say \"hi", "\"hi\"", "\"", "vip", "billing"] {
        assert_eq!(
            ids(&search(&app, ALICE, q).await),
            vec![other.clone()],
            "{q:?}"
        );
    }
    let (s, b) = app
        .put(
            ALICE,
            &format!("/api/v1/sessions/{other}/wrapup"),
            json!({"tags": []}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(
        ids(&search(&app, ALICE, "escalated").await),
        Vec::<String>::new()
    );

    // Short needles (no trigram) still search, in the agent's rows only.
    assert_eq!(ids(&search(&app, ALICE, "lo").await), vec![parcel.clone()]);
    assert_eq!(ids(&search(&app, ALICE, "1").await), vec![refund.clone()]);
    // A match never spans two fields.
    assert_eq!(
        ids(&search(&app, ALICE, "lost\nrefund").await),
        Vec::<String>::new()
    );
    assert_eq!(
        ids(&search(&app, ALICE, "lost refund").await),
        Vec::<String>::new()
    );
    // Query syntax of the index is plain text here.
    for q in [
        "refund OR parcel",
        "\"refund\"",
        "re\"fund",
        "NEAR(refund parcel)",
        "refund*",
        "-refund",
        "subject:refund",
        "%",
        "_",
        "\\",
    ] {
        assert_eq!(
            ids(&search(&app, ALICE, q).await),
            Vec::<String>::new(),
            "{q}"
        );
    }
    assert_eq!(
        ids(&search(&app, ALICE, "refund.desk").await),
        vec![parcel.clone()]
    );
    // Letters beyond ASCII in any case (SQLite's own lower() folds ASCII
    // only), short needles (a scan of the agent's rows) and long ones.
    let ecole = session_of(&app, ALICE, "École fermée", "élodie@customer.example").await;
    for q in ["école", "ÉCOLE", "FERMÉE", "Él", "éL", "ÉLODIE@"] {
        assert_eq!(
            ids(&search(&app, ALICE, q).await),
            vec![ecole.clone()],
            "{q:?}"
        );
    }

    // Paging through a search: newest first, nothing twice, nothing missed.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/api/v1/me/sessions?q=refund&limit=1&cursor={c}"),
            None => "/api/v1/me/sessions?q=refund&limit=1".to_string(),
        };
        let (s, page) = app.get(ALICE, &path).await;
        assert_eq!(s, StatusCode::OK, "{page}");
        seen.extend(ids(&page));
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
        assert!(seen.len() <= 3, "paging does not end: {seen:?}");
    }
    assert_eq!(seen, vec![parcel, refund]);
    app.stop().await;
}

async fn a_forged_cursor_stays_in_the_callers_rows(db: Db) {
    let app = TestApp::spawn(db).await;
    // Interleaved in time: alice, bob, alice, bob, …
    let mut alices = Vec::new();
    let mut bobs = Vec::new();
    for i in 0..4 {
        alices.push(session_of(&app, ALICE, &format!("Shared words {i}"), "a@x.example").await);
        bobs.push(session_of(&app, BOB, &format!("Shared words {i}"), "b@x.example").await);
    }
    // Cursors pointing at each of Bob's rows, and just past them: whatever
    // position they name, Alice gets only her own sessions.
    for bob in &bobs {
        let at = app
            .count(&format!(
                "SELECT created_at FROM user_sessions WHERE id = '{bob}'"
            ))
            .await;
        for (created_at, id) in [
            (at, bob.clone()),
            (at + 1, bob.clone()),
            (at, "~".repeat(64)),
        ] {
            let cursor = Cursor { created_at, id }.encode();
            for query in ["", "&q=shared", "&q=sh", "&state=live"] {
                let (s, b) = app
                    .get(
                        ALICE,
                        &format!("/api/v1/me/sessions?cursor={cursor}{query}"),
                    )
                    .await;
                assert_eq!(s, StatusCode::OK, "{b}");
                assert!(
                    agents(&b).iter().all(|a| a == "alice"),
                    "cursor {cursor}{query} gave {b}"
                );
                assert!(ids(&b).iter().all(|i| alices.contains(i)));
            }
        }
    }
    // A positive control: the forged cursor at Bob's newest does page Alice's rows.
    let at = app
        .count(&format!(
            "SELECT created_at FROM user_sessions WHERE id = '{}'",
            bobs[3]
        ))
        .await;
    let cursor = Cursor {
        created_at: at + 1,
        id: bobs[3].clone(),
    }
    .encode();
    let (_, b) = app
        .get(ALICE, &format!("/api/v1/me/sessions?cursor={cursor}"))
        .await;
    let mut newest_first = alices.clone();
    newest_first.reverse();
    assert_eq!(ids(&b), newest_first);
    app.stop().await;
}

/// `n` characters of four bytes each (CJK Extension B), none repeating
/// soon, so that nothing compresses them.
fn wide_text(n: usize, seed: u32) -> String {
    (0..n as u32)
        .map(|i| char::from_u32(0x20000 + (seed + i * 7919) % 42000).expect("a CJK character"))
        .collect()
}

/// Every field of a session as long as the API allows, in characters of
/// four bytes: the task is picked up (its session is stored, whatever its
/// search entry would have weighed), listed, and found by the start and by
/// the end of its subject and of its customer's name. Before migration 15, PostgreSQL
/// refused such a session ("index row size … exceeds btree version 4
/// maximum 2704"), and the task could never be offered or picked up.
async fn sessions_with_the_longest_fields_are_stored_and_found(db: Db) {
    let app = TestApp::spawn(db).await;
    let subject = wide_text(998, 1);
    let name = wide_text(200, 2);
    let (s, b) = app
        .post(
            support::app::ADMIN,
            "/api/v1/tasks",
            json!({
                "service": "support",
                "modality": "email",
                "subject": subject,
                "customer": {"name": name, "email": "wide@customer.example"},
            }),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    let task = b["id"].as_str().expect("task id").to_string();
    let session = app.pickup(ALICE, &task).await;
    let (s, b) = app
        .post(ALICE, &format!("/api/v1/tasks/{task}/handled"), Value::Null)
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");

    let (s, b) = app.get(ALICE, "/api/v1/me/sessions").await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(ids(&b), vec![session.clone()]);
    assert_eq!(b["items"][0]["subject"], json!(subject), "stored whole");
    // Found by the start and by the end of each field (on PostgreSQL the end
    // lies past the bytes the index keeps: the row itself is checked), once.
    for field in [&subject, &name] {
        let chars: Vec<char> = field.chars().collect();
        let start: String = chars[..20].iter().collect();
        let end: String = chars[chars.len() - 20..].iter().collect();
        for q in [start, end] {
            assert_eq!(ids(&search(&app, ALICE, &q).await), vec![session.clone()]);
            assert_eq!(ids(&search(&app, BOB, &q).await), Vec::<String>::new());
        }
    }
    // A later session with short fields is found beside it, newest first.
    let head: String = subject.chars().take(10).collect();
    let short = session_of(&app, ALICE, &head, "short@customer.example").await;
    let start: String = subject.chars().take(5).collect();
    assert_eq!(
        ids(&search(&app, ALICE, &start).await),
        vec![short, session.clone()]
    );
    app.stop().await;
}

/// A number is found as an agent types it (spaces, dashes, a national
/// trunk `0`, `00`), whatever the spelling telephony stored it in.
async fn a_phone_number_is_found_as_it_is_typed(db: Db) {
    let db = support::app::TestDb::create(db).await;
    let text = format!(
        "{}\n[directory]\ndefault_calling_code = 41\n",
        support::app::base_config(&db.url)
    );
    let app = TestApp::spawn_on(db, Some(text)).await;
    // As telephony sends them: E.164, and E.164 without its `+`.
    let mut calls = Vec::new();
    for (agent, number) in [(ALICE, "+41441112233"), (BOB, "41441112233")] {
        let call = app.new_task("call", "Caller", number).await;
        calls.push(app.pickup(agent, &call).await);
    }
    let mail = session_of(&app, ALICE, "Order 044-111 ref", "ann@customer.example").await;
    for q in [
        "+41441112233",
        "+41 44 111 22 33",
        "+41 44 111",
        "0041 44 111",
        "044 111 22 33",
        "44-111-22",
        "(044) 111",
    ] {
        for (agent, session) in [(ALICE, &calls[0]), (BOB, &calls[1])] {
            let found = ids(&search(&app, agent, q).await);
            assert!(found.contains(session), "{agent} {q:?}: {found:?}");
        }
    }
    // The text as typed is still searched too: the mail's subject.
    assert_eq!(
        ids(&search(&app, ALICE, "044-111").await),
        vec![mail, calls[0].clone()]
    );
    // Another number, and a number's digits in another order, find nothing.
    for q in ["+41 44 222", "111 44"] {
        assert_eq!(
            ids(&search(&app, ALICE, q).await),
            Vec::<String>::new(),
            "{q:?}"
        );
    }
    app.stop().await;
}

/// The Greek sigma has two lower cases (`σ`, and `ς` at a word's end):
/// a name is found whichever way it was written or is searched.
async fn a_greek_name_is_found_whatever_its_sigma(db: Db) {
    let app = TestApp::spawn(db).await;
    let mut found = Vec::new();
    for name in ["Ωmega ΣΊΣΥΦΟΣ", "Οδυσσέας Λαέρτιος"] {
        let (s, b) = app
            .post(
                support::app::ADMIN,
                "/api/v1/tasks",
                json!({"service": "support", "modality": "email", "subject": "Γεια",
                       "customer": {"name": name, "email": "greek@customer.example"}}),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{b}");
        let task = b["id"].as_str().unwrap().to_string();
        found.push(app.pickup(ALICE, &task).await);
        let (s, b) = app
            .post(ALICE, &format!("/api/v1/tasks/{task}/handled"), Value::Null)
            .await;
        assert_eq!(s, StatusCode::OK, "{b}");
    }
    for q in ["ΣΊΣΥΦΟΣ", "σίσυφος", "σίσυφοσ", "Σίσυφος"] {
        assert_eq!(
            ids(&search(&app, ALICE, q).await),
            vec![found[0].clone()],
            "{q}"
        );
    }
    for q in ["ΛΑΈΡΤΙΟΣ", "λαέρτιος", "λαέρτιοσ", "ΟΔΥΣΣΈΑΣ"] {
        assert_eq!(
            ids(&search(&app, ALICE, q).await),
            vec![found[1].clone()],
            "{q}"
        );
    }
    app.stop().await;
}

on_both_backends!(
    a_greek_name_is_found_whatever_its_sigma,
    a_phone_number_is_found_as_it_is_typed,
    search_follows_inserts_and_updates,
    a_forged_cursor_stays_in_the_callers_rows,
    sessions_with_the_longest_fields_are_stored_and_found,
);
