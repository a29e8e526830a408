//! The HTTP API core, end to end, on SQLite and on PostgreSQL.
mod support;

use reqwest::StatusCode;
use serde_json::{Value, json};
use std::time::Duration;
use support::app::{ADMIN, ALICE, BOB, CAROL, Db, RawConn, TestApp, TestDb, maildir_config};
use support::mail::{deliver_maildir, mail, wait_for};

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
    assert_eq!(b["schema_version"], app.store().latest_schema_version());
    let resp = reqwest::get(format!("{}/metrics", app.url)).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let text = resp.text().await.unwrap();
    assert!(
        text.contains("switchboard_queue_depth{modality=\"email\",service=\"support\"} 0"),
        "{text}"
    );
    // The process's database connections, as the store counts them.
    let open = text
        .lines()
        .find_map(|l| l.strip_prefix("switchboard_db_connections{state=\"open\"} "))
        .and_then(|v| v.parse::<u32>().ok())
        .expect("switchboard_db_connections{state=\"open\"}");
    assert!(open >= 1, "{text}");
    assert!(
        text.contains("switchboard_db_connections{state=\"lane\"}"),
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
    // The same external_id for another kind of task is a mistake, not a
    // retry: said so, nothing made or lost in silence.
    let (s, reused) = app
        .post(
            ADMIN,
            "/api/v1/tasks",
            json!({"service": "support", "modality": "email", "external_id": "pbx-call-0001", "subject": "Mail"}),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{reused}");
    assert_eq!(reused["error"]["code"], "external_id_reused", "{reused}");
    assert!(
        reused["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("external_id: 'pbx-call-0001' is already the id of task"),
        "{reused}"
    );

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
    // Telephony retries the end: nothing changes.
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
    assert_eq!(t["sessions"].as_array().map(Vec::len), Some(1), "{t}");
    let (s, w) = app.put(ALICE, &format!("/api/v1/sessions/{session}/wrapup"), json!({"codes": {"primary": ["billing"], "secondary": ["vip"]}, "tags": ["late fee", " late fee "]})).await;
    assert_eq!(s, StatusCode::OK, "{w}");
    assert_eq!(w["wrapup"]["tags"], json!(["late fee"]));
    // With If-Match, an older view (another tab) cannot overwrite what was
    // kept since; the current fingerprint (the ETag) can.
    let path = format!("/api/v1/sessions/{session}/wrapup");
    let kept =
        json!({"codes": {"primary": ["billing"], "secondary": ["vip"]}, "tags": ["late fee"]});
    let r = app
        .request(reqwest::Method::PUT, ALICE, &path)
        .json(&kept)
        .send()
        .await
        .unwrap();
    let etag = r.headers()["etag"].to_str().unwrap().to_string();
    // Reading the session gives the same fingerprint (a client's first
    // write can be conditional too).
    let r = app
        .request(
            reqwest::Method::GET,
            ALICE,
            &format!("/api/v1/sessions/{session}"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["etag"].to_str().unwrap(), etag);
    let (s, b) = app
        .send(
            app.request(reqwest::Method::PUT, ALICE, &path)
                .header("if-match", "\"0123456789abcdef01234567\"")
                .json(&json!({"tags": ["from an old tab"]})),
        )
        .await;
    assert_eq!(s, StatusCode::PRECONDITION_FAILED, "{b}");
    assert_eq!(b["error"]["code"], "wrapup_changed");
    // A header that is no fingerprint at all is a bad request, not a stale view.
    let (s, b) = app
        .send(
            app.request(reqwest::Method::PUT, ALICE, &path)
                .header("if-match", "garbage")
                .json(&json!({"tags": ["from an old tab"]})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{b}");
    assert!(
        b["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .starts_with("If-Match:"),
        "{b}"
    );
    // A stale view is told so before its body is checked against the catalog.
    let (s, b) = app
        .send(
            app.request(reqwest::Method::PUT, ALICE, &path)
                .header("if-match", "\"0123456789abcdef01234567\"")
                .json(&json!({"codes": {"primary": ["no-such-code"]}})),
        )
        .await;
    assert_eq!(s, StatusCode::PRECONDITION_FAILED, "{b}");
    let (s, b) = app
        .send(
            app.request(reqwest::Method::PUT, ALICE, &path)
                .header("if-match", &etag)
                .json(&kept),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    // Tabs saving at once over the same view: the check and the write are
    // one, so exactly one of them keeps its codes and tags, the rest are 412.
    let etag = b["wrapup"].clone();
    let r = app
        .request(reqwest::Method::PUT, ALICE, &path)
        .json(&etag)
        .send()
        .await
        .unwrap();
    let etag = r.headers()["etag"].to_str().unwrap().to_string();
    let tabs = (0..8).map(|tab| {
        app.send(
            app.request(reqwest::Method::PUT, ALICE, &path)
                .header("if-match", &etag)
                .json(&json!({"codes": {"primary": ["billing"], "secondary": ["vip"]}, "tags": [format!("tab {tab}")]})),
        )
    });
    let answers = futures_util::future::join_all(tabs).await;
    let kept: Vec<&Value> = answers
        .iter()
        .filter(|(s, _)| *s == StatusCode::OK)
        .map(|(_, b)| b)
        .collect();
    assert_eq!(kept.len(), 1, "{answers:?}");
    assert!(
        answers
            .iter()
            .all(|(s, b)| *s == StatusCode::OK || b["error"]["code"] == "wrapup_changed"),
        "{answers:?}"
    );
    let (_, now) = app.get(ALICE, &format!("/api/v1/tasks/{call_id}")).await;
    assert_eq!(
        now["sessions"][0]["wrapup"]["tags"], kept[0]["wrapup"]["tags"],
        "{now}"
    );
    // A code retired while the session is open stays on it as the agent
    // edits the rest; it cannot be picked anew.
    let (s, b) = app
        .put(
            ADMIN,
            "/api/v1/admin/services/support/codes",
            json!([{"code": "billing", "label": "Billing", "kind": "primary"},
                   {"code": "refund", "label": "Refund", "kind": "secondary"}]),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let mut more = now["sessions"][0]["wrapup"].clone();
    more["tags"] = json!(["after the retirement"]);
    let (s, b) = app.put(ALICE, &path, more).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["wrapup"]["codes"]["secondary"], json!(["vip"]), "{b}");
    let (s, b) = app
        .put(ALICE, &path, json!({"codes": {"primary": ["vip"]}}))
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{b}");
    assert!(
        b["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("'vip' is not in this service's code catalog"),
        "{b}"
    );
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
        // Telephony retries (a lost answer): the same outcome again changes nothing.
        for _ in 0..3 {
            let (s, b) = app
                .post(
                    ADMIN,
                    &format!("/api/v1/tasks/{task}/outcome"),
                    json!({"agent": agent, "result": result}),
                )
                .await;
            assert_eq!(s, StatusCode::OK, "{b}");
        }
    }
    let (_, t) = app.get(ADMIN, &format!("/api/v1/tasks/{task}")).await;
    assert_eq!(
        t["sessions"].as_array().map(Vec::len),
        Some(2),
        "one session per outcome, retries included: {t}"
    );
    let (_, b) = app.get(BOB, "/api/v1/me/sessions?state=concluded").await;
    assert_eq!(b["items"][0]["result"], "declined");
    // A declined offer has no wrap-up: saving it says so (not "already saved").
    let declined = b["items"][0]["id"].as_str().unwrap().to_string();
    let (s, e) = app
        .post(
            BOB,
            &format!("/api/v1/sessions/{declined}/save"),
            Value::Null,
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{e}");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("nothing to save"),
        "{e}"
    );
    let (_, a) = app.get(ALICE, "/api/v1/me/sessions").await;
    assert_eq!(a["items"][0]["result"], "rona");
    assert_eq!(a["items"][0]["live"], false);
    // A call Bob took cannot be declined or missed by him afterwards,
    // neither while he talks nor in wrap-up.
    let taken = app.new_task("call", "Taken call", "+1 555 0198").await;
    for (body, state) in [
        (json!({"agent": "bob", "result": "accepted"}), "connected"),
        (
            json!({"agent": "bob", "result": "accepted", "ended": true}),
            "wrap_up",
        ),
    ] {
        let (s, b) = app
            .post(ADMIN, &format!("/api/v1/tasks/{taken}/outcome"), body)
            .await;
        assert_eq!(
            (s, b["state"].as_str()),
            (StatusCode::OK, Some(state)),
            "{b}"
        );
        for result in ["declined", "rona"] {
            let (s, b) = app
                .post(
                    ADMIN,
                    &format!("/api/v1/tasks/{taken}/outcome"),
                    json!({"agent": "bob", "result": result}),
                )
                .await;
            assert_eq!(s, StatusCode::CONFLICT, "{state}, {result}: {b}");
        }
    }
    // Another agent's accept of it says who took it.
    let (s, b) = app
        .post(
            ADMIN,
            &format!("/api/v1/tasks/{taken}/outcome"),
            json!({"agent": "alice", "result": "accepted"}),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{b}");
    assert!(
        b["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("was accepted by 'bob' already"),
        "{b}"
    );
    let (_, t) = app.get(ADMIN, &format!("/api/v1/tasks/{taken}")).await;
    assert_eq!(t["sessions"].as_array().map(Vec::len), Some(1), "{t}");
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
        "a repeated cancel: {t}"
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
        let (s, b) = app
            .post(
                holder,
                &format!("/api/v1/tasks/{task}/handled"),
                Value::Null,
            )
            .await;
        assert_eq!(
            (s, b["state"].as_str()),
            (StatusCode::OK, Some("wrap_up")),
            "round {round}: {b}"
        );
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
        let (status, b) = app
            .post(ALICE, &format!("/api/v1/tasks/{task}/handled"), Value::Null)
            .await;
        assert_eq!(status, StatusCode::OK, "{b}");
        sessions.push(s);
    }
    let (s, b) = app
        .put(
            ALICE,
            &format!("/api/v1/sessions/{}/wrapup", sessions[2]),
            json!({"tags": ["Escalated_100%"]}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["wrapup"]["tags"], json!(["Escalated_100%"]), "{b}");
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
    // A page that ends exactly at the last session offers no next page.
    let (_, page) = app.get(ALICE, "/api/v1/me/sessions?limit=7").await;
    assert_eq!(ids(&page).len(), 7, "{page}");
    assert_eq!(page["next_cursor"], Value::Null, "{page}");
    let (_, page) = app.get(ADMIN, "/api/v1/tasks?limit=7").await;
    assert_eq!(page["items"].as_array().map(Vec::len), Some(7), "{page}");
    assert_eq!(page["next_cursor"], Value::Null, "{page}");
    let (_, page) = app.get(ADMIN, "/api/v1/tasks?limit=6").await;
    assert!(page["next_cursor"].is_string(), "{page}");

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

/// Another agent of the same service gets a 404 for everything of a task it
/// is not involved in: its drafts (read, autosave, discard, send), their
/// attachments (upload, reorder, remove) and its messages, exactly as for an
/// id that does not exist, so nothing tells it the thing is there. The owner,
/// asking the same, is answered (the control).
async fn another_agents_drafts_and_messages_are_not_found(db: Db) {
    use reqwest::Method;
    let test_db = TestDb::create(db).await;
    let inbox = test_db.dir().join("inbox");
    let text = maildir_config(&test_db.url, &inbox);
    let app = TestApp::spawn_on(test_db, Some(text)).await;
    deliver_maildir(
        &inbox,
        "1.a.host",
        &mail(
            "Kim <kim@customer.example>",
            "My invoice",
            "inv-1@customer.example",
            &[],
            "Why twice?",
        ),
    );
    let task = wait_for(Duration::from_secs(30), "the mail as a task", || async {
        let (_, b) = app.get(ADMIN, "/api/v1/tasks?modality=email").await;
        b["items"][0]["id"].as_str().map(str::to_owned)
    })
    .await;
    app.pickup(ALICE, &task).await;
    let (s, draft) = app
        .post(
            ALICE,
            &format!("/api/v1/tasks/{task}/drafts"),
            json!({"kind": "reply"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{draft}");
    let id = draft["id"].as_str().expect("draft id").to_owned();
    let (s, draft) = app
        .send(
            app.request(
                Method::POST,
                ALICE,
                &format!("/api/v1/drafts/{id}/attachments?filename=a.txt"),
            )
            .header("if-match", draft["version"].to_string())
            .header("content-type", "text/plain")
            .body("first"),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{draft}");
    let attachment = draft["attachments"][0]["id"]
        .as_str()
        .expect("attachment id")
        .to_owned();
    let version = draft["version"].to_string();

    // Every request an owner could make, for the draft `d`, its attachment
    // `a` and the task `t`: `(what, request)`.
    let requests = |token: &'static str, d: &str, a: &str, t: &str| {
        let edit = json!({"subject": "Mine now", "body_text": "Taken over."});
        vec![
            (
                "GET draft",
                app.request(Method::GET, token, &format!("/api/v1/drafts/{d}")),
            ),
            (
                "PUT draft",
                app.request(Method::PUT, token, &format!("/api/v1/drafts/{d}"))
                    .header("if-match", &version)
                    .json(&edit),
            ),
            (
                "POST attachment",
                app.request(
                    Method::POST,
                    token,
                    &format!("/api/v1/drafts/{d}/attachments?filename=b.txt"),
                )
                .header("if-match", &version)
                .header("content-type", "text/plain")
                .body("second"),
            ),
            (
                "PUT attachment order",
                app.request(
                    Method::PUT,
                    token,
                    &format!("/api/v1/drafts/{d}/attachments"),
                )
                .header("if-match", &version)
                .json(&json!({"order": [a]})),
            ),
            (
                "DELETE attachment",
                app.request(
                    Method::DELETE,
                    token,
                    &format!("/api/v1/drafts/{d}/attachments/{a}"),
                )
                .header("if-match", &version),
            ),
            (
                "send draft",
                app.request(Method::POST, token, &format!("/api/v1/drafts/{d}/send")),
            ),
            (
                "DELETE draft",
                app.request(Method::DELETE, token, &format!("/api/v1/drafts/{d}")),
            ),
            (
                "GET task messages",
                app.request(Method::GET, token, &format!("/api/v1/tasks/{t}/messages")),
            ),
        ]
    };
    let before = app.get(ALICE, &format!("/api/v1/drafts/{id}")).await;
    assert_eq!(before.0, StatusCode::OK, "{}", before.1);
    let unknown = requests(
        BOB,
        "drf_doesnotexist0000000000",
        "att_doesnotexist0000000000",
        "tsk_doesnotexist0000000000",
    );
    let others = requests(BOB, &id, &attachment, &task);
    for ((what, nothing), (_, theirs)) in unknown.into_iter().zip(others) {
        let (s_nothing, b_nothing) = app.send(nothing).await;
        let (s, b) = app.send(theirs).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{db:?} {what}: {b}");
        assert_eq!(
            (s, &b["error"]["code"]),
            (s_nothing, &b_nothing["error"]["code"]),
            "{db:?} {what}: told apart from a missing one: {b} vs {b_nothing}"
        );
        // Unchanged by each attempt.
        assert_eq!(
            app.get(ALICE, &format!("/api/v1/drafts/{id}")).await,
            before,
            "{db:?} {what}"
        );
    }
    // The control: the owner reads them all.
    let (s, b) = app
        .get(ALICE, &format!("/api/v1/tasks/{task}/messages"))
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["items"][0]["message_id"], "inv-1@customer.example", "{b}");
    let (s, b) = app
        .send(
            app.request(
                Method::PUT,
                ALICE,
                &format!("/api/v1/drafts/{id}/attachments"),
            )
            .header("if-match", &version)
            .json(&json!({"order": [attachment]})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let (s, b) = app
        .send(app.request(Method::DELETE, ALICE, &format!("/api/v1/drafts/{id}")))
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{b}");
    app.stop().await;
}

/// A raw write to a user session: `(name, sql)` made from the target's id,
/// its SQLite rowid, the id of another row of the test's (`mover`) and the task.
type RawWrite = (&'static str, fn(&str, i64, &str, &str) -> String);

/// The columns a raw insert of a user session fills, and its values.
fn session_values(id: &str, task: &str) -> String {
    format!(
        "(id, task_id, agent_id, service_id, modality, state, created_at, updated_at, tags) \
         VALUES ('{id}', '{task}', 'alice', 'support', 'email', 'wrap_up', 0, 0, '[\"replaced\"]')"
    )
}

/// Every way a client of either database can write to one row of
/// `user_sessions` (SQLite's conflict resolutions included).
fn raw_writes(db: Db) -> Vec<RawWrite> {
    let mut writes: Vec<RawWrite> = vec![
        ("UPDATE", |t, _, _, _| {
            format!("UPDATE user_sessions SET tags = '[\"tampered\"]' WHERE id = '{t}'")
        }),
        ("UPDATE back to wrap-up", |t, _, _, _| {
            format!(
                "UPDATE user_sessions SET state = 'wrap_up', saved_at = NULL, result = 'declined' \
                 WHERE id = '{t}'"
            )
        }),
        ("DELETE", |t, _, _, _| {
            format!("DELETE FROM user_sessions WHERE id = '{t}'")
        }),
        ("INSERT ... ON CONFLICT DO UPDATE", |t, _, _, task| {
            format!(
                "INSERT INTO user_sessions {} ON CONFLICT (id) DO UPDATE SET tags = excluded.tags",
                session_values(t, task)
            )
        }),
    ];
    match db {
        Db::Sqlite => writes.extend([
            (
                "REPLACE",
                (|t, _, _, task| format!("REPLACE INTO user_sessions {}", session_values(t, task)))
                    as fn(&str, i64, &str, &str) -> String,
            ),
            ("INSERT OR REPLACE", |t, _, _, task| {
                format!(
                    "INSERT OR REPLACE INTO user_sessions {}",
                    session_values(t, task)
                )
            }),
            ("INSERT OR REPLACE on its rowid", |_, r, m, task| {
                let values = session_values(&format!("{m}-new"), task)
                    .replacen("(id,", "(rowid, id,", 1)
                    .replacen("VALUES (", &format!("VALUES ({r}, "), 1);
                format!("INSERT OR REPLACE INTO user_sessions {values}")
            }),
            ("UPDATE OR REPLACE onto its id", |t, _, m, _| {
                format!("UPDATE OR REPLACE user_sessions SET id = '{t}' WHERE id = '{m}'")
            }),
            ("UPDATE OR REPLACE onto its rowid", |_, r, m, _| {
                format!("UPDATE OR REPLACE user_sessions SET rowid = {r} WHERE id = '{m}'")
            }),
        ]),
        Db::Postgres => writes.extend([
            (
                "MERGE ... UPDATE",
                (|t, _, _, _| {
                    format!(
                        "MERGE INTO user_sessions u USING (SELECT '{t}' AS id) s ON u.id = s.id \
                     WHEN MATCHED THEN UPDATE SET tags = '[\"merged\"]'"
                    )
                }) as fn(&str, i64, &str, &str) -> String,
            ),
            ("MERGE ... DELETE", |t, _, _, _| {
                format!(
                    "MERGE INTO user_sessions u USING (SELECT '{t}' AS id) s ON u.id = s.id \
                     WHEN MATCHED THEN DELETE"
                )
            }),
        ]),
    }
    writes
}

/// Saved is final, whoever writes to the database and however: each raw
/// write is tried first on a session that is not saved (the control: the
/// statement is sound and the database lets it through), then on a saved one
/// (refused, the row read back unchanged), on connections with the options
/// that change which triggers fire.
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
    let (s, b) = app
        .post(ALICE, &format!("/api/v1/tasks/{task}/handled"), Value::Null)
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let (s, b) = app
        .post(
            ALICE,
            &format!("/api/v1/sessions/{session}/save"),
            Value::Null,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["state"], "concluded", "{b}");

    let mut conn = RawConn::open(&app.db.url).await;
    let saved = conn
        .row("user_sessions", "id", &session)
        .await
        .expect("the saved row");
    let rows = conn.int("SELECT count(*) FROM user_sessions").await;
    let settings: &[&[&str]] = match db {
        // Off by default, `recursive_triggers` decides whether REPLACE's
        // deletions fire delete triggers.
        Db::Sqlite => &[
            &[],
            &["PRAGMA recursive_triggers = ON"],
            &["PRAGMA foreign_keys = OFF"],
        ],
        // `replica` skips triggers that are not ENABLE ALWAYS.
        Db::Postgres => &[&[], &["SET session_replication_role = replica"]],
    };
    let mut n = 0;
    for setting in settings {
        let mut conn = RawConn::open(&app.db.url).await;
        for s in *setting {
            conn.exec(s).await.expect(s);
        }
        for (name, write) in raw_writes(db) {
            n += 1;
            let control = format!("control-{n}");
            // The rows moved onto the control's and the saved one's id or rowid.
            let (mover, mover2) = (format!("mover-{n}"), format!("mover2-{n}"));
            for id in [&control, &mover, &mover2] {
                let sql = format!(
                    "INSERT INTO user_sessions {}",
                    session_values(id, &task).replace("replaced", "control")
                );
                assert_eq!(conn.exec(&sql).await, Ok(1), "{sql}");
            }
            let rowid = |id: &str| format!("SELECT rowid FROM user_sessions WHERE id = '{id}'");
            let (control_rowid, saved_rowid) = match db {
                Db::Sqlite => (
                    conn.int(&rowid(&control)).await,
                    conn.int(&rowid(&session)).await,
                ),
                Db::Postgres => (0, 0),
            };
            let before = conn.row("user_sessions", "id", &control).await;
            let sql = write(&control, control_rowid, &mover, &task);
            conn.exec(&sql)
                .await
                .unwrap_or_else(|e| panic!("{setting:?} {name}: control refused: {sql}: {e}"));
            assert_ne!(
                conn.row("user_sessions", "id", &control).await,
                before,
                "{setting:?} {name}: the control row did not change: {sql}"
            );

            let sql = write(&session, saved_rowid, &mover2, &task);
            let err = conn
                .exec(&sql)
                .await
                .expect_err(&format!("{setting:?} {name}: {sql}"));
            assert!(
                err.contains("concluded and cannot be changed"),
                "{setting:?} {name}: {sql}: {err}"
            );
            assert_eq!(
                conn.row("user_sessions", "id", &session).await.as_deref(),
                Some(saved.as_str()),
                "{setting:?} {name}: {sql}"
            );
        }
        if db == Db::Postgres {
            for sql in ["TRUNCATE user_sessions", "TRUNCATE tasks CASCADE"] {
                let err = conn.exec(sql).await.expect_err(sql);
                assert!(
                    err.contains("cannot be truncated"),
                    "{setting:?} {sql}: {err}"
                );
            }
        }
        let cleanup = conn
            .exec(&format!(
                "DELETE FROM user_sessions WHERE id <> '{session}'"
            ))
            .await;
        assert!(cleanup.is_ok(), "{cleanup:?}");
        assert_eq!(conn.int("SELECT count(*) FROM user_sessions").await, rows);
    }
    assert_eq!(
        conn.row("user_sessions", "id", &session).await.as_deref(),
        Some(saved.as_str())
    );
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
    let carols = app.pickup(CAROL, &task).await;
    let (_, t) = app.get(ADMIN, &format!("/api/v1/tasks/{task}")).await;
    assert_eq!(t["sessions"].as_array().map(Vec::len), Some(2));
    // Carol, its holder now, ends it and saves: the task is concluded then,
    // whether or not alice has saved the part she transferred away.
    // Alice, who transferred it, is told why she cannot answer it.
    let (s, b) = app
        .post(
            ALICE,
            &format!("/api/v1/tasks/{task}/drafts"),
            json!({"kind": "new"}),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{b}");
    assert!(
        b["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("you transferred task"),
        "{b}"
    );
    let (s, b) = app
        .post(CAROL, &format!("/api/v1/tasks/{task}/handled"), Value::Null)
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    // Handled: it can no longer be transferred, and she is told so.
    let (s, b) = app
        .post(
            CAROL,
            &format!("/api/v1/tasks/{task}/transfer"),
            json!({"service": "support"}),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{b}");
    assert!(
        b["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("in wrap-up"),
        "{b}"
    );
    let (s, b) = app
        .post(
            CAROL,
            &format!("/api/v1/sessions/{carols}/save"),
            Value::Null,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let (_, t) = app.get(ADMIN, &format!("/api/v1/tasks/{task}")).await;
    assert_eq!(t["state"], "concluded", "{t}");
    let ended_at = t["ended_at"].clone();
    assert!(ended_at.is_string(), "{t}");
    // Alice can still save her part; the task stays as it concluded.
    let (s, _) = app
        .post(
            ALICE,
            &format!("/api/v1/sessions/{session}/save"),
            Value::Null,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let (_, t) = app.get(ADMIN, &format!("/api/v1/tasks/{task}")).await;
    assert_eq!(
        (&t["state"], &t["ended_at"]),
        (&json!("concluded"), &ended_at),
        "{t}"
    );
    let (s, b) = app
        .post(
            CAROL,
            &format!("/api/v1/tasks/{task}/drafts"),
            json!({"kind": "new"}),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{b}");
    assert!(
        b["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("is concluded"),
        "{b}"
    );
    app.stop().await;
}

async fn admins_manage_the_directory_and_customers_resolve(db: Db) {
    let app = TestApp::spawn(db).await;
    let (s, b) = app
        .put(ADMIN, "/api/v1/admin/services/billing", json!({"name": "Billing", "email_addresses": ["Billing@Example.com"], "codes": [{"code": "paid", "label": "Paid"}], "capacity": {"email": 1}}))
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
    // A service as GET gives it goes back with PUT: read, change, write.
    let (_, mut read) = app.get(ADMIN, "/api/v1/admin/services/billing").await;
    read["settings"]["priority"] = json!(7);
    read["settings"]["keep_context_days"] = json!(3);
    let (s, b) = app
        .put(ADMIN, "/api/v1/admin/services/billing", read.clone())
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["settings"], read["settings"], "{b}");
    assert_eq!(b["codes"], read["codes"], "{b}");
    // Its id must be the path's; a setting given twice, or unknown, is
    // refused (without positions in a text it did not send).
    let mut twice = read.clone();
    twice["priority"] = json!(1);
    let mut unknown = read.clone();
    unknown["settings"]["priorty"] = json!(1);
    for (path, body, said, first) in [
        ("other", read.clone(), "id:", true),
        ("billing", twice, "settings.priority", false),
        ("billing", unknown, "settings.priorty: unknown field", false),
    ] {
        let (s, b) = app
            .put(ADMIN, &format!("/api/v1/admin/services/{path}"), body)
            .await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{b}");
        let message = b["error"]["message"].as_str().unwrap_or_default();
        let placed = if first {
            message.starts_with(said)
        } else {
            message.contains(said)
        };
        assert!(placed && !message.contains("column"), "{b}");
    }
    // A number out of a setting's range is told the setting's own range,
    // not what a machine integer holds.
    for (setting, value, said) in [
        (
            "keep_context_days",
            json!(-1),
            "keep_context_days: -1 is out of range: use 0 to 30",
        ),
        (
            "keep_context_days",
            json!(31),
            "keep_context_days: 31 is out of range: use 0 to 30",
        ),
        (
            "broadcast_size",
            json!(2.5),
            "broadcast_size: 2.5 must be a whole number, 1 to 100",
        ),
        ("rona_reset_secs", json!(1e12), "use 0 to 86400"),
        (
            "max_ronas",
            json!(0),
            "max_ronas: 0 is out of range: use 1 or more",
        ),
        ("max_ronas", json!(3), "max_ronas: set overflow_service too"),
    ] {
        let mut body = read.clone();
        body["settings"][setting] = value;
        let (s, b) = app.put(ADMIN, "/api/v1/admin/services/billing", body).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{b}");
        let message = b["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.starts_with(setting) && message.contains(said),
            "{b}"
        );
    }
    let (s, b) = app
        .put(ADMIN, "/api/v1/admin/agents/dave", json!({"name": "Dave", "email": "dave@example.com", "token": "dave-token-0123456789", "services": ["billing"]}))
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let (s, _) = app
        .get("dave-token-0123456789", "/api/v1/me/sessions")
        .await;
    assert_eq!(s, StatusCode::OK);
    // Dave set no capacity: his service's default where it sets one.
    let (_, d) = app.get(ADMIN, "/api/v1/admin/agents/dave").await;
    assert_eq!(
        d["capacity"],
        json!({"email": 1, "im": 2, "call": 1}),
        "{d}"
    );
    let (s, d) = app
        .put(ADMIN, "/api/v1/admin/agents/dave", json!({"name": "Dave", "email": "dave@example.com", "services": ["billing"], "capacity": {"email": 4}}))
        .await;
    assert_eq!(
        (s, &d["capacity"]),
        (StatusCode::OK, &json!({"email": 4, "im": 2, "call": 1})),
        "{d}"
    );
    let (_, service) = app.get(ADMIN, "/api/v1/admin/services/billing").await;
    assert_eq!(
        service["settings"]["capacity"],
        json!({"email": 1, "im": null, "call": null}),
        "{service}"
    );
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
    // A postal address on two lines, as a task's customer may have it.
    let (s, b) = app.put(ADMIN, "/api/v1/admin/contacts/c3", json!({"name": "Ben Two-Lines", "email": "ben@lines.example", "postal_address": "Bahnhofstr. 1\r\n8001 Zürich"})).await;
    assert_eq!(
        (s, b["postal_address"].as_str()),
        (StatusCode::OK, Some("Bahnhofstr. 1\n8001 Zürich")),
        "{b}"
    );
    // A UPN with spaces is refused here as on a task.
    let (s, b) = app
        .put(
            ADMIN,
            "/api/v1/admin/directory/spaced",
            json!({"name": "Spaced", "upn": "no spaces allowed"}),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{b}");
    assert!(
        b["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .starts_with("upn: contains spaces"),
        "{b}"
    );
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
        json!({"service": "support", "modality": "call", "parameters": {"k": "v".repeat(17_000)}}),
    ] {
        // Read, but a value breaks a rule: 422 on every endpoint, naming it.
        let (s, b) = app.post(ADMIN, "/api/v1/tasks", bad.clone()).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{bad}: {b}");
        assert!(b["error"]["message"].is_string());
    }
    // A priority is told its own range, whatever number it was given as.
    for (priority, says) in [
        (json!(1e20), "out of range: use -100 to 100"),
        (json!(3_000_000_000u64), "out of range: use -100 to 100"),
        (json!(2.5), "must be a whole number from -100 to 100"),
    ] {
        let bad = json!({"service": "support", "modality": "call", "priority": priority});
        let (s, b) = app.post(ADMIN, "/api/v1/tasks", bad.clone()).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{bad}: {b}");
        let m = b["error"]["message"].as_str().unwrap_or_default();
        assert!(m.contains("priority") && m.contains(says), "{bad}: {m}");
    }
    let (s, b) = app
        .post(
            ADMIN,
            "/api/v1/tasks",
            json!({"service": "support", "modality": "call", "priority": 3.0}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    let (s, b) = app
        .post(
            ADMIN,
            "/api/v1/tasks",
            json!({"service": "support", "modality": "call", "subject": "x".repeat(999)}),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    let m = b["error"]["message"].as_str().unwrap_or_default();
    assert!(m.contains("subject") && m.contains("998"), "{b}");
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

/// A posted task's arrival orders its queue: not from the future (beyond a
/// clock's drift) nor from long ago.
async fn posted_arrival_times_are_bounded(db: Db) {
    let app = TestApp::spawn(db).await;
    let post = |arrived: String| {
        let app = &app;
        async move {
            app.post(
                ADMIN,
                "/api/v1/tasks",
                json!({"service": "support", "modality": "call", "arrived_at": arrived}),
            )
            .await
        }
    };
    let (s, b) = post("2100-01-01T00:00:00Z".into()).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{b}");
    assert_eq!(
        b["error"]["message"],
        "arrived_at: is more than 5 minutes ahead of this server's clock"
    );
    let (s, b) = post("1970-01-01T00:00:00Z".into()).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{b}");
    assert_eq!(
        b["error"]["message"],
        "arrived_at: is more than 30 days ago"
    );
    let hour_ago = (chrono::Utc::now() - chrono::Duration::hours(1)).to_rfc3339();
    let (s, b) = post(hour_ago).await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    app.stop().await;
}

/// Refusals say what is wrong in words: a presence that is none (the field
/// named once), a pickup by an agent who takes no tasks of that kind.
async fn refusals_are_said_in_words(db: Db) {
    let app = TestApp::spawn(db).await;
    let (s, b) = app
        .put(ALICE, "/api/v1/me/presence", json!({"status": "lunch"}))
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{b}");
    assert_eq!(
        b["error"]["message"],
        "status: 'lunch' is not one of available, busy, away, offline"
    );
    let (s, b) = app
        .put(
            ADMIN,
            "/api/v1/admin/agents/zed",
            json!({"name": "Zed", "email": "zed@example.com", "token": "zed-token-0123456789",
                   "services": ["support"], "capacity": {"email": 0}}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let t = app.new_task("email", "Zero", "zero@customer.example").await;
    let (s, b) = app
        .post(
            "zed-token-0123456789",
            &format!("/api/v1/tasks/{t}/pickup"),
            Value::Null,
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{b}");
    assert!(
        b["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .starts_with("you take no email tasks (your capacity for them is 0)"),
        "{b}"
    );
    app.stop().await;
}

on_both_backends!(
    refusals_are_said_in_words,
    posted_arrival_times_are_bounded,
    health_endpoints_answer,
    authentication_is_required_and_checked,
    a_call_from_telephony_lists_beside_other_sessions,
    declined_and_unanswered_offers_conclude_at_once,
    pickup_takes_a_queued_task_of_ones_service,
    racing_pickups_have_exactly_one_winner,
    my_sessions_filters_searches_and_pages,
    an_agent_never_sees_another_agents_sessions,
    saved_sessions_are_immutable_in_the_database,
    another_agents_drafts_and_messages_are_not_found,
    wrapup_is_checked_against_the_catalog,
    transfer_moves_the_task_and_ends_the_session,
    admins_manage_the_directory_and_customers_resolve,
    data_survives_a_restart,
);

/// A migrated store of `max_connections` on a fresh PostgreSQL database,
/// with none of the app's background loops.
async fn bare_pg_store(max_connections: u32) -> (TestDb, switchboard::store::Store) {
    let test_db = TestDb::create(Db::Postgres).await;
    let store = switchboard::store::Store::connect(&test_db.url, max_connections)
        .await
        .expect("store");
    store.migrate().await.expect("migrate");
    (test_db, store)
}

/// The first page of My Sessions.
fn first_page() -> switchboard::store::SessionFilter {
    switchboard::store::SessionFilter {
        limit: 10,
        ..Default::default()
    }
}

/// PostgreSQL: the pool hands out a connection used in the last seconds
/// without a ping (sqlx would otherwise add a round trip to every request),
/// and pings one that sat idle for longer. Connections that died while idle
/// (the database restarted, a firewall cut them) are found out and replaced:
/// every query after the idle time succeeds. (A bare store: no background
/// loop uses, and so weeds out, a dead connection first.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_that_died_while_idle_are_replaced() {
    let (test_db, store) = bare_pg_store(4).await;
    // Four connections open and idle: two in the pool, two kept by the
    // read lane (half of a pool of 4).
    let filter = first_page();
    let mine = || store.my_sessions("agent-x", &filter);
    let stats = futures_util::future::join_all((0..4).map(|_| store.outbox_stats())).await;
    assert!(stats.iter().all(Result::is_ok), "{stats:?}");
    let pages = futures_util::future::join_all((0..2).map(|_| mine())).await;
    assert!(pages.iter().all(Result::is_ok), "{pages:?}");
    let admin = sqlx::PgPool::connect(&test_db.url).await.expect("connect");
    let cut: i64 = sqlx::query_scalar(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
         WHERE application_name = 'switchboard' AND datname = current_database()
           AND pid <> pg_backend_pid()",
    )
    .fetch_one(&admin)
    .await
    .expect("terminate");
    assert!(cut >= 2, "the pool's connections were cut ({cut})");
    // Longer than the pool's PING_IDLE_AFTER (5 s): the passing of idle
    // time is what is tested, so there is no event to wait for instead.
    tokio::time::sleep(Duration::from_millis(5_500)).await;
    for i in 0..8 {
        let v = store.outbox_stats().await;
        assert!(v.is_ok(), "query {i} after the cut: {v:?}");
        let v = mine().await;
        assert!(v.is_ok(), "My Sessions {i} after the cut: {v:?}");
    }
    admin.close().await;
    // The pool waits for checked-out connections when it closes: the
    // lane's are given back first, so closing does not hang.
    tokio::time::timeout(Duration::from_secs(10), store.close())
        .await
        .expect("the store closes with the lane's connections given back");
}

/// PostgreSQL: the read lane keeps the connections of a burst of My
/// Sessions reads, and its sweep gives them back to the pool once they have
/// not been needed for 5 s, with no further read to trigger it (otherwise a
/// burst would keep half the pool from writes for good).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_read_lane_gives_unneeded_connections_back() {
    let (_test_db, store) = bare_pg_store(4).await;
    let filter = first_page();
    let pages =
        futures_util::future::join_all((0..2).map(|_| store.my_sessions("agent-x", &filter))).await;
    assert!(pages.iter().all(Result::is_ok), "{pages:?}");
    let burst = store.connections();
    assert!(
        burst.lane >= 1,
        "the lane keeps the burst's connections: {burst:?}"
    );
    assert!(burst.lane <= 2, "at most half of a pool of 4: {burst:?}");
    // The sweep runs every 5 s and gives back what sat unneeded for 5 s:
    // at most 10 s. Only time passes here; there is no event to await.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        // Given back to the pool: idle there, ready for writes.
        let now = store.connections();
        if now.lane == 0 && now.idle >= burst.idle + burst.lane {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "15 s after the burst ({burst:?}) the lane has not given its connections back: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::timeout(Duration::from_secs(10), store.close())
        .await
        .expect("the store closes");
}

/// A store whose My Sessions lane keeps connections can be dropped after
/// its runtime is gone (the last clone of a store in a program's teardown):
/// nothing panics.
#[test]
fn a_store_outliving_its_runtime_drops_cleanly() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let (test_db, store) = rt.block_on(async {
        let (test_db, store) = bare_pg_store(4).await;
        store
            .my_sessions("agent-x", &first_page())
            .await
            .expect("my sessions");
        (test_db, store)
    });
    drop(rt);
    drop(store);
    drop(test_db);
}

/// A database nothing was applied to is at schema version 0 (the versions
/// table is missing); that is the only error read as version 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_database_is_at_schema_version_0() {
    for db in [Db::Sqlite, Db::Postgres] {
        let test_db = TestDb::create(db).await;
        let store = switchboard::store::Store::connect(&test_db.url, 2)
            .await
            .expect("store");
        assert_eq!(store.schema_version().await.expect("read"), 0, "{db:?}");
        store.migrate().await.expect("migrate");
        assert_eq!(
            store.schema_version().await.expect("read"),
            store.latest_schema_version(),
            "{db:?}"
        );
        // A newer switchboard's schema is refused, not taken for its own.
        let newer = store.latest_schema_version() + 1;
        support::app::RawConn::open(&test_db.url)
            .await
            .exec(&format!(
                "INSERT INTO schema_migrations (version, name, applied_at) VALUES ({newer}, 'from the future', 0)"
            ))
            .await
            .expect("a newer version recorded");
        let e = store
            .migrate()
            .await
            .expect_err("a newer schema")
            .to_string();
        assert!(
            e.contains(&format!(
                "schema version {newer}, newer than this switchboard knows"
            )),
            "{db:?}: {e}"
        );
        store.close().await;
    }
}

/// PostgreSQL: while the database refuses connections, `/metrics` still
/// answers with the process's own series and `switchboard_database_up 0`
/// (the database's figures left out), and says 1 again once it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_answer_while_the_database_is_down() {
    let app = TestApp::spawn(Db::Postgres).await;
    let metrics = || async {
        let resp = reqwest::get(format!("{}/metrics", app.url)).await.unwrap();
        (resp.status(), resp.text().await.unwrap())
    };
    let (s, text) = metrics().await;
    assert_eq!(s, StatusCode::OK);
    assert!(
        text.lines().any(|l| l == "switchboard_database_up 1"),
        "{text}"
    );
    // From the server's maintenance database: the test's own refuses
    // everyone meanwhile.
    let name = app.db.url.rsplit('/').next().unwrap().to_string();
    let admin = sqlx::PgPool::connect(&support::app::pg_admin_url())
        .await
        .expect("connect");
    let alter = |allow: bool| format!("ALTER DATABASE \"{name}\" ALLOW_CONNECTIONS {allow}");
    sqlx::raw_sql(sqlx::AssertSqlSafe(alter(false)))
        .execute(&admin)
        .await
        .expect("refuse connections");
    sqlx::query(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
         WHERE datname = $1",
    )
    .bind(&name)
    .execute(&admin)
    .await
    .expect("terminate");
    let (s, text) = metrics().await;
    assert_eq!(s, StatusCode::OK, "{text}");
    assert!(
        text.lines().any(|l| l == "switchboard_database_up 0"),
        "{text}"
    );
    assert!(text.contains("switchboard_build_info{"), "{text}");
    assert!(!text.contains("switchboard_queue_depth"), "{text}");
    sqlx::raw_sql(sqlx::AssertSqlSafe(alter(true)))
        .execute(&admin)
        .await
        .expect("allow connections");
    // Back as soon as the pool has replaced the connections that were cut.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let (s, text) = metrics().await;
        assert_eq!(s, StatusCode::OK);
        if text.lines().any(|l| l == "switchboard_database_up 1") {
            assert!(text.contains("switchboard_queue_depth{"), "{text}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{text}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    admin.close().await;
    app.stop().await;
}
