//! The HTTP API core, end to end, on SQLite and on PostgreSQL.
mod support;

use reqwest::StatusCode;
use serde_json::{Value, json};
use support::app::{ADMIN, ALICE, BOB, CAROL, Db, TestApp};

fn ids(body: &Value) -> Vec<String> {
    body["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|s| s["id"].as_str().unwrap_or_default().to_string())
        .collect()
}

async fn health_endpoints_answer(db: Db) {
    let app = TestApp::spawn(db).await;
    let (s, b) = app.get("", "/healthz").await;
    assert_eq!((s, b["status"].as_str()), (StatusCode::OK, Some("ok")));
    let (s, b) = app.get("", "/readyz").await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["schema_version"], 11);
    let resp = reqwest::get(format!("{}/metrics", app.url)).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let text = resp.text().await.unwrap();
    assert!(
        text.contains("switchboard_queue_depth{modality=\"email\",service=\"support\"} 0"),
        "{text}"
    );
    let (s, b) = app.get("", "/api/v1/openapi.json").await;
    assert_eq!(s, StatusCode::OK);
    assert!(
        b["openapi"].as_str().unwrap_or_default().starts_with("3."),
        "{b}"
    );
    app.stop().await;
}

async fn authentication_is_required_and_checked(db: Db) {
    let app = TestApp::spawn(db).await;
    let resp = reqwest::get(format!("{}/api/v1/me/sessions", app.url))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(resp.headers()["www-authenticate"], "Bearer");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unauthorized");
    let (s, b) = app
        .get("not-a-real-token-at-all", "/api/v1/me/sessions")
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{b}");
    // Agents are not admins.
    let (s, b) = app.get(ALICE, "/api/v1/tasks").await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("forbidden"))
    );
    let (s, _) = app
        .post(
            ALICE,
            "/api/v1/tasks",
            json!({"service": "support", "modality": "call"}),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _) = app
        .put(
            BOB,
            "/api/v1/admin/agents/bob",
            json!({"name": "B", "email": "b@x.io", "admin": true}),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    // Unknown endpoints and methods answer in the same error shape.
    let (s, b) = app.get(ALICE, "/api/v1/nothing-here").await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_found"))
    );
    app.stop().await;
}

async fn a_call_from_telephony_lists_beside_other_sessions(db: Db) {
    let app = TestApp::spawn(db).await;
    let email = app
        .new_task("email", "Where is my order?", "someone@customer.example")
        .await;
    app.pickup(ALICE, &email).await;
    let call = json!({
        "service": "support",
        "modality": "call",
        "external_id": "pbx-call-0001",
        "subject": "Inbound call",
        "customer": {"address": "+1 555 0100", "name": "Caller"},
        "parameters": {"ivr_choice": "billing"},
        "outcome": {"agent": "alice", "result": "accepted"},
    });
    let (s, task) = app.post(ADMIN, "/api/v1/tasks", call.clone()).await;
    assert_eq!(s, StatusCode::CREATED, "{task}");
    assert_eq!(task["state"], "connected");
    assert_eq!(task["parameters"]["ivr_choice"], "billing");
    assert_eq!(task["customer"]["kind"], "anonymous");
    assert_eq!(task["customer"]["name"], "Caller");
    // Posting again is idempotent: same task, no second session.
    let (s, again) = app.post(ADMIN, "/api/v1/tasks", call).await;
    assert_eq!(s, StatusCode::OK, "{again}");
    assert_eq!(again["id"], task["id"]);
    assert_eq!(again["sessions"].as_array().map(Vec::len), Some(1));

    let (s, list) = app.get(ALICE, "/api/v1/me/sessions").await;
    assert_eq!(s, StatusCode::OK, "{list}");
    let items = list["items"].as_array().unwrap();
    let modalities: Vec<&str> = items
        .iter()
        .map(|i| i["modality"].as_str().unwrap())
        .collect();
    assert_eq!(modalities, vec!["call", "email"], "newest first");
    assert!(
        items
            .iter()
            .all(|i| i["live"] == true && i["result"] == "accepted")
    );

    // The call ends: wrap-up, save, and the task concludes.
    let call_id = task["id"].as_str().unwrap();
    let (s, t) = app
        .post(
            ADMIN,
            &format!("/api/v1/tasks/{call_id}/outcome"),
            json!({"agent": "alice", "result": "accepted", "ended": true}),
        )
        .await;
    assert_eq!(
        (s, t["state"].as_str()),
        (StatusCode::OK, Some("wrap_up")),
        "{t}"
    );
    let session = t["sessions"][0]["id"].as_str().unwrap().to_string();
    let (s, w) = app.put(ALICE, &format!("/api/v1/sessions/{session}/wrapup"), json!({"codes": {"primary": ["billing"], "secondary": ["vip"]}, "tags": ["late fee", " late fee "]})).await;
    assert_eq!(s, StatusCode::OK, "{w}");
    assert_eq!(w["wrapup"]["tags"], json!(["late fee"]));
    let (s, saved) = app
        .post(
            ALICE,
            &format!("/api/v1/sessions/{session}/save"),
            Value::Null,
        )
        .await;
    assert_eq!(
        (s, saved["state"].as_str()),
        (StatusCode::OK, Some("concluded")),
        "{saved}"
    );
    assert!(saved["saved_at"].is_string());
    let (s, b) = app
        .post(
            ALICE,
            &format!("/api/v1/sessions/{session}/save"),
            Value::Null,
        )
        .await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (StatusCode::CONFLICT, Some("conflict")),
        "{b}"
    );
    let (s, _) = app
        .put(
            ALICE,
            &format!("/api/v1/sessions/{session}/wrapup"),
            json!({"tags": ["changed"]}),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT);
    let (_, t) = app.get(ADMIN, &format!("/api/v1/tasks/{call_id}")).await;
    assert_eq!(t["state"], "concluded");

    let (_, concluded) = app.get(ALICE, "/api/v1/me/sessions?state=concluded").await;
    assert_eq!(ids(&concluded), vec![session.clone()]);
    let (_, live) = app
        .get(ALICE, "/api/v1/me/sessions?state=live&modality=email")
        .await;
    assert_eq!(live["items"].as_array().map(Vec::len), Some(1));
    assert_eq!(live["items"][0]["modality"], "email");
    app.stop().await;
}

async fn declined_and_unanswered_offers_conclude_at_once(db: Db) {
    let app = TestApp::spawn(db).await;
    let task = app.new_task("call", "Inbound call", "+1 555 0199").await;
    for (agent, result) in [("bob", "declined"), ("alice", "rona")] {
        let (s, b) = app
            .post(
                ADMIN,
                &format!("/api/v1/tasks/{task}/outcome"),
                json!({"agent": agent, "result": result}),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{b}");
    }
    let (_, b) = app.get(BOB, "/api/v1/me/sessions?state=concluded").await;
    assert_eq!(b["items"][0]["result"], "declined");
    let (_, a) = app.get(ALICE, "/api/v1/me/sessions").await;
    assert_eq!(a["items"][0]["result"], "rona");
    assert_eq!(a["items"][0]["live"], false);
    // The customer hangs up while waiting: the task is cancelled.
    let (s, t) = app
        .post(
            ADMIN,
            &format!("/api/v1/tasks/{task}/outcome"),
            json!({"agent": "alice", "result": "cancelled"}),
        )
        .await;
    assert_eq!(
        (s, t["state"].as_str()),
        (StatusCode::OK, Some("cancelled")),
        "{t}"
    );
    app.stop().await;
}

async fn pickup_takes_a_queued_task_of_ones_service(db: Db) {
    let app = TestApp::spawn(db).await;
    let task = app.new_task("email", "Help", "x@customer.example").await;
    // Carol is not in Support: for her the task does not exist.
    let (s, b) = app
        .post(CAROL, &format!("/api/v1/tasks/{task}/pickup"), Value::Null)
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{b}");
    app.pickup(ALICE, &task).await;
    let (s, b) = app
        .post(BOB, &format!("/api/v1/tasks/{task}/pickup"), Value::Null)
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{b}");
    // Bob's email capacity is 1.
    let t1 = app.new_task("email", "One", "1@customer.example").await;
    let t2 = app.new_task("email", "Two", "2@customer.example").await;
    app.pickup(BOB, &t1).await;
    let (s, b) = app
        .post(BOB, &format!("/api/v1/tasks/{t2}/pickup"), Value::Null)
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{b}");
    assert!(
        b["error"]["message"].as_str().unwrap().contains("capacity"),
        "{b}"
    );
    // Handled frees the slot.
    let (s, t) = app
        .post(BOB, &format!("/api/v1/tasks/{t1}/handled"), Value::Null)
        .await;
    assert_eq!((s, t["state"].as_str()), (StatusCode::OK, Some("wrap_up")));
    app.pickup(BOB, &t2).await;
    // Only the holder marks a task handled; for Alice, who never had it,
    // Bob's task does not exist. Bob marking it twice is a conflict.
    let (s, _) = app
        .post(ALICE, &format!("/api/v1/tasks/{t2}/handled"), Value::Null)
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = app
        .post(ALICE, "/api/v1/tasks/tsk_doesnotexist/pickup", Value::Null)
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    app.stop().await;
}

async fn racing_pickups_have_exactly_one_winner(db: Db) {
    let app = TestApp::spawn(db).await;
    for round in 0..5 {
        let task = app
            .new_task("im", &format!("Race {round}"), "race@customer.example")
            .await;
        let path = format!("/api/v1/tasks/{task}/pickup");
        let (a, b) = tokio::join!(
            app.post(ALICE, &path, Value::Null),
            app.post(BOB, &path, Value::Null)
        );
        let winners = [a.0, b.0]
            .iter()
            .filter(|s| **s == StatusCode::CREATED)
            .count();
        assert_eq!(winners, 1, "round {round}: {a:?} {b:?}");
        assert!([a.0, b.0].contains(&StatusCode::CONFLICT));
        let (_, t) = app.get(ADMIN, &format!("/api/v1/tasks/{task}")).await;
        assert_eq!(t["sessions"].as_array().map(Vec::len), Some(1), "{t}");
        // Free both agents for the next round.
        let holder = if a.0 == StatusCode::CREATED {
            ALICE
        } else {
            BOB
        };
        app.post(
            holder,
            &format!("/api/v1/tasks/{task}/handled"),
            Value::Null,
        )
        .await;
    }
    app.stop().await;
}

async fn my_sessions_filters_searches_and_pages(db: Db) {
    let app = TestApp::spawn(db).await;
    let mut sessions = Vec::new();
    for i in 0..7 {
        let modality = if i % 2 == 0 { "email" } else { "im" };
        let task = app
            .new_task(
                modality,
                &format!("Subject number {i}"),
                &format!("c{i}@customer.example"),
            )
            .await;
        let s = app.pickup(ALICE, &task).await;
        app.post(ALICE, &format!("/api/v1/tasks/{task}/handled"), Value::Null)
            .await;
        sessions.push(s);
    }
    app.put(
        ALICE,
        &format!("/api/v1/sessions/{}/wrapup", sessions[2]),
        json!({"tags": ["Escalated_100%"]}),
    )
    .await;
    // Walk the pages: newest first, no duplicates, nothing missing.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/api/v1/me/sessions?limit=3&cursor={c}"),
            None => "/api/v1/me/sessions?limit=3".to_string(),
        };
        let (s, page) = app.get(ALICE, &path).await;
        assert_eq!(s, StatusCode::OK, "{page}");
        seen.extend(ids(&page));
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
        assert!(seen.len() <= 7, "pagination does not end");
    }
    let mut newest_first = sessions.clone();
    newest_first.reverse();
    assert_eq!(seen, newest_first);

    let (_, b) = app.get(ALICE, "/api/v1/me/sessions?modality=im").await;
    assert_eq!(b["items"].as_array().map(Vec::len), Some(3));
    let (_, b) = app.get(ALICE, "/api/v1/me/sessions?q=NUMBER%205").await;
    assert_eq!(
        ids(&b),
        vec![sessions[5].clone()],
        "search in subject, any case"
    );
    let (_, b) = app.get(ALICE, "/api/v1/me/sessions?q=c3%40customer").await;
    assert_eq!(
        ids(&b),
        vec![sessions[3].clone()],
        "search in customer address"
    );
    let (_, b) = app
        .get(ALICE, "/api/v1/me/sessions?q=escalated_100%25")
        .await;
    assert_eq!(
        ids(&b),
        vec![sessions[2].clone()],
        "search in tags, wildcards literal"
    );
    let (_, b) = app.get(ALICE, "/api/v1/me/sessions?q=escalated_1000").await;
    assert_eq!(ids(&b), Vec::<String>::new());
    let (_, b) = app.get(ALICE, "/api/v1/me/sessions?q=%25").await;
    assert_eq!(
        ids(&b),
        vec![sessions[2].clone()],
        "a % matches only a literal %"
    );

    for bad in [
        "limit=0",
        "limit=500",
        "state=open",
        "modality=fax",
        "cursor=garbage!",
        "unknown=1",
    ] {
        let (s, b) = app.get(ALICE, &format!("/api/v1/me/sessions?{bad}")).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}: {b}");
        assert_eq!(b["error"]["code"], "invalid_request", "{bad}");
    }
    app.stop().await;
}

async fn an_agent_never_sees_another_agents_sessions(db: Db) {
    let app = TestApp::spawn(db).await;
    let task = app
        .new_task("email", "Private matter", "secret@customer.example")
        .await;
    let session = app.pickup(ALICE, &task).await;
    let (_, b) = app.get(BOB, "/api/v1/me/sessions").await;
    assert_eq!(ids(&b), Vec::<String>::new());
    let (_, b) = app.get(BOB, "/api/v1/me/sessions?q=private").await;
    assert_eq!(ids(&b), Vec::<String>::new());
    for (s, _) in [
        app.get(BOB, &format!("/api/v1/sessions/{session}")).await,
        app.put(
            BOB,
            &format!("/api/v1/sessions/{session}/wrapup"),
            json!({"tags": ["mine now"]}),
        )
        .await,
        app.post(
            BOB,
            &format!("/api/v1/sessions/{session}/save"),
            Value::Null,
        )
        .await,
        app.get(BOB, &format!("/api/v1/tasks/{task}")).await,
    ] {
        assert_eq!(s, StatusCode::NOT_FOUND);
    }
    let (s, b) = app
        .post(
            BOB,
            &format!("/api/v1/tasks/{task}/transfer"),
            json!({"service": "sales"}),
        )
        .await;
    // Not even whether it exists: Bob never had it and it is not waiting.
    assert_eq!(s, StatusCode::NOT_FOUND, "{b}");
    // Alice still sees hers, untouched.
    let (s, b) = app.get(ALICE, &format!("/api/v1/sessions/{session}")).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(b["wrapup"]["tags"], json!([]));
    // A cursor made from someone else's session only pages through one's own.
    let (_, b) = app.get(ALICE, "/api/v1/me/sessions").await;
    assert_eq!(ids(&b), vec![session]);
    app.stop().await;
}

async fn saved_sessions_are_immutable_in_the_database(db: Db) {
    let app = TestApp::spawn(db).await;
    let task = app
        .new_task("email", "Final answer", "f@customer.example")
        .await;
    let session = app.pickup(ALICE, &task).await;
    // Not yet saved: the database allows changes (the control case).
    let changed = app
        .raw_sql(&format!(
            "UPDATE user_sessions SET tags = '[\"draft\"]' WHERE id = '{session}'"
        ))
        .await;
    assert_eq!(changed, Ok(1));
    app.post(ALICE, &format!("/api/v1/tasks/{task}/handled"), Value::Null)
        .await;
    let (s, _) = app
        .post(
            ALICE,
            &format!("/api/v1/sessions/{session}/save"),
            Value::Null,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    for sql in [
        format!("UPDATE user_sessions SET tags = '[\"tampered\"]' WHERE id = '{session}'"),
        format!(
            "UPDATE user_sessions SET state = 'wrap_up', saved_at = NULL WHERE id = '{session}'"
        ),
        format!("UPDATE user_sessions SET result = 'declined' WHERE id = '{session}'"),
        format!("DELETE FROM user_sessions WHERE id = '{session}'"),
    ] {
        let err = app.raw_sql(&sql).await.expect_err(&sql);
        assert!(
            err.contains("concluded and cannot be changed"),
            "{sql}: {err}"
        );
    }
    if db == Db::Postgres {
        let err = app
            .raw_sql("TRUNCATE user_sessions CASCADE")
            .await
            .expect_err("truncate");
        assert!(err.contains("cannot be truncated"), "{err}");
    }
    let (_, b) = app.get(ALICE, &format!("/api/v1/sessions/{session}")).await;
    assert_eq!(b["wrapup"]["tags"], json!(["draft"]));
    assert_eq!(b["state"], "concluded");
    app.stop().await;
}

async fn wrapup_is_checked_against_the_catalog(db: Db) {
    let app = TestApp::spawn(db).await;
    let task = app
        .new_task("email", "Codes", "codes@customer.example")
        .await;
    let session = app.pickup(ALICE, &task).await;
    let path = format!("/api/v1/sessions/{session}/wrapup");
    let cases = [
        (
            json!({"codes": {"primary": ["nonsense"]}}),
            "not in this service's code catalog",
        ),
        (
            json!({"codes": {"secondary": ["billing"]}}),
            "is a primary code",
        ),
        (json!({"tags": ["x".repeat(65)]}), "longer than"),
    ];
    for (body, expected) in cases {
        let (s, b) = app.put(ALICE, &path, body).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{b}");
        assert!(
            b["error"]["message"].as_str().unwrap().contains(expected),
            "{b}"
        );
    }
    let (s, b) = app
        .put(
            ALICE,
            &path,
            json!({"codes": {"primary": ["billing"]}, "colour": "red"}),
        )
        .await;
    assert_eq!(
        s,
        StatusCode::UNPROCESSABLE_ENTITY,
        "unknown fields are refused: {b}"
    );
    let resp = app
        .client
        .put(format!("{}{path}", app.url))
        .bearer_auth(ALICE)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let b: Value = resp.json().await.unwrap();
    assert_eq!(b["error"]["code"], "invalid_request");
    // Sales has codes turned off.
    let (s, t) = app
        .post(
            ALICE,
            &format!("/api/v1/tasks/{task}/transfer"),
            json!({"service": "sales"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{t}");
    let task_again = t["id"].as_str().unwrap();
    let carol_session = app.pickup(CAROL, task_again).await;
    let (s, b) = app
        .put(
            CAROL,
            &format!("/api/v1/sessions/{carol_session}/wrapup"),
            json!({"codes": {"primary": ["billing"]}}),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{b}");
    app.stop().await;
}

async fn transfer_moves_the_task_and_ends_the_session(db: Db) {
    let app = TestApp::spawn(db).await;
    let task = app
        .new_task("im", "Wants to buy", "buyer@customer.example")
        .await;
    let session = app.pickup(ALICE, &task).await;
    let (s, t) = app
        .post(
            ALICE,
            &format!("/api/v1/tasks/{task}/transfer"),
            json!({"service": "sales"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{t}");
    assert_eq!(
        (t["service"].as_str(), t["state"].as_str()),
        (Some("sales"), Some("queued"))
    );
    let (_, mine) = app.get(ALICE, &format!("/api/v1/sessions/{session}")).await;
    assert_eq!(
        (mine["result"].as_str(), mine["state"].as_str()),
        (Some("transferred"), Some("wrap_up"))
    );
    let (s, _) = app
        .post(
            ALICE,
            &format!("/api/v1/tasks/{task}/transfer"),
            json!({"service": "nowhere"}),
        )
        .await;
    // An unknown service in the body is a bad request, as for POST /tasks.
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    app.pickup(CAROL, &task).await;
    let (_, t) = app.get(ADMIN, &format!("/api/v1/tasks/{task}")).await;
    assert_eq!(t["sessions"].as_array().map(Vec::len), Some(2));
    // Alice can still save her part.
    let (s, _) = app
        .post(
            ALICE,
            &format!("/api/v1/sessions/{session}/save"),
            Value::Null,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    app.stop().await;
}

async fn admins_manage_the_directory_and_customers_resolve(db: Db) {
    let app = TestApp::spawn(db).await;
    let (s, b) = app
        .put(ADMIN, "/api/v1/admin/services/billing", json!({"name": "Billing", "email_addresses": ["Billing@Example.com"], "codes": [{"code": "paid", "label": "Paid"}]}))
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["email_addresses"], json!(["billing@example.com"]));
    assert_eq!(b["codes"][0]["code"], "paid");
    let (s, b) = app
        .put(
            ADMIN,
            "/api/v1/admin/services/billing/codes",
            json!([{"code": "late", "label": "Late", "kind": "secondary"}]),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(
        b["codes"].as_array().map(Vec::len),
        Some(1),
        "old codes are retired: {b}"
    );
    let (s, b) = app
        .put(ADMIN, "/api/v1/admin/agents/dave", json!({"name": "Dave", "email": "dave@example.com", "token": "dave-token-0123456789", "services": ["billing"]}))
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let (s, _) = app
        .get("dave-token-0123456789", "/api/v1/me/sessions")
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, b) = app
        .put(
            ADMIN,
            "/api/v1/admin/agents/eve",
            json!({"name": "Eve", "email": "eve@example.com", "services": ["nope"]}),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{b}");
    let (s, b) = app
        .put(
            ADMIN,
            "/api/v1/admin/agents/bad%20id",
            json!({"name": "X", "email": "x@example.com"}),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{b}");
    let (s, b) = app.put(ADMIN, "/api/v1/admin/contacts/c1", json!({"name": "Ada Lovelace", "email": "Ada@Analytical.example", "phone": "+44 20 7946 0001"})).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let (s, _) = app
        .put(
            ADMIN,
            "/api/v1/admin/contacts/c2",
            json!({"name": "Nobody"}),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);

    let post = |address: &str| json!({"service": "support", "modality": "email", "customer": {"address": address}});
    let (_, t) = app
        .post(ADMIN, "/api/v1/tasks", post("ada@analytical.EXAMPLE"))
        .await;
    assert_eq!(
        (
            t["customer"]["kind"].as_str(),
            t["customer"]["name"].as_str()
        ),
        (Some("external"), Some("Ada Lovelace"))
    );
    let (_, t) = app
        .post(ADMIN, "/api/v1/tasks", post("+44 (20) 7946-0001"))
        .await;
    assert_eq!(
        t["customer"]["ref"], "c1",
        "phone numbers match on digits: {t}"
    );
    let (_, t) = app
        .post(ADMIN, "/api/v1/tasks", post("Bob@Example.com"))
        .await;
    assert_eq!(
        (
            t["customer"]["kind"].as_str(),
            t["customer"]["ref"].as_str()
        ),
        (Some("internal"), Some("bob"))
    );
    let (_, t) = app
        .post(ADMIN, "/api/v1/tasks", post("stranger@else.example"))
        .await;
    assert_eq!(
        (
            t["customer"]["kind"].as_str(),
            t["customer"]["display"].as_str()
        ),
        (Some("anonymous"), Some("stranger@else.example"))
    );

    let (s, b) = app
        .get(
            ADMIN,
            "/api/v1/tasks?service=support&state=queued&modality=email&limit=2",
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["items"].as_array().map(Vec::len), Some(2));
    let cursor = b["next_cursor"].as_str().expect("a next page").to_string();
    let (_, b2) = app
        .get(
            ADMIN,
            &format!(
                "/api/v1/tasks?service=support&state=queued&modality=email&limit=2&cursor={cursor}"
            ),
        )
        .await;
    assert_eq!(b2["items"].as_array().map(Vec::len), Some(2));
    assert!(ids(&b2).iter().all(|id| !ids(&b).contains(id)));
    for bad in [
        json!({"service": "support"}),
        json!({"service": "support", "modality": "fax"}),
        json!({"service": "support", "modality": "call", "priority": 1000}),
    ] {
        let (s, b) = app.post(ADMIN, "/api/v1/tasks", bad.clone()).await;
        assert!(
            s == StatusCode::UNPROCESSABLE_ENTITY || s == StatusCode::BAD_REQUEST,
            "{bad}: {s} {b}"
        );
        assert!(b["error"]["message"].is_string());
    }
    app.stop().await;
}

async fn data_survives_a_restart(db: Db) {
    let app = TestApp::spawn(db).await;
    let task = app
        .new_task("email", "Persistent", "p@customer.example")
        .await;
    let session = app.pickup(ALICE, &task).await;
    let dbh = app.stop().await;
    // The same configuration applied again changes nothing it should not.
    let app = TestApp::spawn_on(dbh, None).await;
    let (_, b) = app.get(ALICE, "/api/v1/me/sessions").await;
    assert_eq!(ids(&b), vec![session]);
    app.stop().await;
}

on_both_backends!(
    health_endpoints_answer,
    authentication_is_required_and_checked,
    a_call_from_telephony_lists_beside_other_sessions,
    declined_and_unanswered_offers_conclude_at_once,
    pickup_takes_a_queued_task_of_ones_service,
    racing_pickups_have_exactly_one_winner,
    my_sessions_filters_searches_and_pages,
    an_agent_never_sees_another_agents_sessions,
    saved_sessions_are_immutable_in_the_database,
    wrapup_is_checked_against_the_catalog,
    transfer_moves_the_task_and_ends_the_session,
    admins_manage_the_directory_and_customers_resolve,
    data_survives_a_restart,
);
