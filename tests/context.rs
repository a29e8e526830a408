//! Session details and conversation context, end to end on both backends:
//! callers resolved by phone (directory, address book, unknown), "Update
//! task" by an integration, context links with every kind of placeholder and
//! hostile values, context removed at the end unless kept (then gone after
//! its days, by the retention job), and the A → B → C transfer.
mod support;

use reqwest::StatusCode;
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use support::app::{ADMIN, Db, TestApp, TestDb};

const CRM: &str = "crm-token-0123456789abcdef";
const READER: &str = "reader-token-0123456789abcd";
const WRITER: &str = "writer-token-0123456789abcd";

fn token(agent: &str) -> String {
    format!("{agent}-token-0123456789abcdef")
}

/// Services (TOML bodies), agents (id, services), plus the admin and two
/// integrations (`crm` reads and writes tasks and reads contacts; `reader`
/// only reads tasks).
fn config(db_url: &str, extra: &str, services: &[&str], agents: &[(&str, &str)]) -> String {
    let mut text = format!(
        "[database]\nurl = \"{db_url}\"\nmax_connections = 8\n[http]\nbind = \"127.0.0.1:0\"\n{extra}\n"
    );
    for s in services {
        text.push_str(&format!("[[services]]\n{s}\n"));
    }
    for (id, service) in agents {
        text.push_str(&format!(
            "[[agents]]\nid = \"{id}\"\nname = \"{id}\"\nemail = \"{id}@example.com\"\ntoken = \"{}\"\nservices = [\"{service}\"]\n",
            token(id)
        ));
    }
    text.push_str(&format!(
        "[[agents]]\nid = \"admin\"\nname = \"Admin\"\nemail = \"admin@example.com\"\ntoken = \"{ADMIN}\"\nadmin = true\n\
         [[integrations]]\nid = \"crm\"\ntoken = \"{CRM}\"\nscopes = [\"tasks:read\", \"tasks:write\", \"contacts:read\"]\n\
         [[integrations]]\nid = \"reader\"\ntoken = \"{READER}\"\nscopes = [\"tasks:read\"]\n\
         [[integrations]]\nid = \"writer\"\ntoken = \"{WRITER}\"\nscopes = [\"tasks:write\"]\n"
    ));
    text
}

async fn start(db: Db, text: impl FnOnce(&str) -> String) -> TestApp {
    let db = TestDb::create(db).await;
    let t = text(&db.url);
    TestApp::spawn_on(db, Some(t)).await
}

async fn send(req: reqwest::RequestBuilder) -> (StatusCode, Value) {
    let resp = req.send().await.expect("request reaches the server");
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

async fn patch(app: &TestApp, token: &str, path: &str, body: Value) -> (StatusCode, Value) {
    send(
        app.client
            .patch(format!("{}{path}", app.url))
            .bearer_auth(token)
            .json(&body),
    )
    .await
}

async fn delete(app: &TestApp, token: &str, path: &str) -> (StatusCode, Value) {
    send(
        app.client
            .delete(format!("{}{path}", app.url))
            .bearer_auth(token),
    )
    .await
}

async fn import(app: &TestApp, path: &str, content_type: &str, body: &str) -> (StatusCode, Value) {
    send(
        app.client
            .post(format!("{}{path}", app.url))
            .bearer_auth(ADMIN)
            .header("content-type", content_type)
            .body(body.to_string()),
    )
    .await
}

/// Posts a call (as telephony would) and returns its id.
async fn call(app: &TestApp, service: &str, customer: Value) -> String {
    let (s, b) = app
        .post(
            ADMIN,
            "/api/v1/tasks",
            json!({"service": service, "modality": "call", "customer": customer, "reached": "+41 44 999 00 00"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    b["id"].as_str().unwrap().to_string()
}

async fn task(app: &TestApp, token: &str, id: &str) -> Value {
    let (s, t) = app.get(token, &format!("/api/v1/tasks/{id}")).await;
    assert_eq!(s, StatusCode::OK, "{t}");
    t
}

async fn ok(app: &TestApp, token: &str, path: &str, body: Value) -> Value {
    let (s, b) = app.post(token, path, body).await;
    assert!(s.is_success(), "{path}: {s} {b}");
    b
}

/// The session of `agent` in a task view.
fn session_of<'a>(task: &'a Value, agent: &str) -> &'a Value {
    task["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["agent_id"] == agent)
        .unwrap_or_else(|| panic!("no session of {agent} in {task}"))
}

/// Polls until `check` holds, or panics with `what`.
async fn eventually<F, Fut>(within: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !check().await {
        assert!(
            start.elapsed() < within,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

const PICKUP: &str = "distribution = \"pickup\"";

async fn callers_are_found_by_phone_upn_or_address(db: Db) {
    let app = start(db, |u| {
        config(
            u,
            "[directory]\ndefault_calling_code = 41",
            &[&format!("id = \"support\"\nname = \"Support\"\n{PICKUP}")],
            &[("alice", "support")],
        )
    })
    .await;
    // The internal directory: one user by API, more by import (all or none).
    let (s, b) = app
        .put(
            ADMIN,
            "/api/v1/admin/directory/ursula",
            json!({"name": "Ursula Intern", "phone": "044 111 22 33", "upn": "Ursula@Tenant.example", "department": "IT"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(
        b["phone"], "+41441112233",
        "national numbers take the calling code"
    );
    assert_eq!(b["upn"], "ursula@tenant.example");
    let (s, b) = import(
        &app,
        "/api/v1/admin/directory/import",
        "application/json",
        r#"[{"id": "vera", "name": "Vera", "email": "vera@tenant.example"},
            {"id": "walt", "name": "Walt", "phone": "12"}]"#,
    )
    .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{b}");
    assert!(
        b["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("rows[1].phone: has ")
            && b["error"]["message"].as_str().unwrap().contains("6 to 15"),
        "{b}"
    );
    assert_eq!(
        app.count("SELECT count(*) FROM directory_users WHERE id = 'vera'")
            .await,
        0,
        "all or none"
    );
    let (s, b) = import(
        &app,
        "/api/v1/admin/directory/import",
        "text/csv",
        "id,name,email,phone,upn,department\nvera,Vera,vera@tenant.example,,,\nwalt,Walt,,+41 44 111 99 99,,Ops\n",
    )
    .await;
    assert_eq!(
        (s, b["imported"].as_u64()),
        (StatusCode::OK, Some(2)),
        "{b}"
    );
    // The address book, by CSV, with a bad line named.
    let (s, b) = import(
        &app,
        "/api/v1/admin/contacts/import",
        "text/csv",
        "id,name,email,phone,company,postal_address\nc-john,John Doe,john@customer.example,0041 44 000 00 00,ACME,\"Bahnhofstrasse 1, 8001 Zürich\"\nc-bad,Bad,not-an-email,,,\n",
    )
    .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{b}");
    assert!(
        b["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("line 3: email: "),
        "{b}"
    );
    // A line with a field too many, and a row that names nobody: said in
    // words, the line or row named.
    for (kind, body, says) in [
        (
            "text/csv",
            "id,name,email\nc-x,X,x@customer.example,extra\n",
            "line 2: 4 fields where the header line has 3",
        ),
        (
            "application/json",
            r#"[{"id": "c-y", "name": "Y", "email": "y@customer.example"}, {"id": "c-z", "name": "Z"}]"#,
            "rows[1]: a contact needs an email or a phone number",
        ),
        // A column the import does not know: the header line's.
        (
            "text/csv",
            "id,name,email,extra\nc-x,X,x@customer.example,1\n",
            "line 1 (the header line): unknown column 'extra': the columns are id, name, email, phone, company, postal_address",
        ),
        // No id column: the header line's, not every row's.
        (
            "text/csv",
            "name,email\nX,x@customer.example\n",
            "line 1 (the header line): no 'id' column: every row needs one",
        ),
        // One id on two rows: the second would silently replace the first.
        (
            "text/csv",
            "id,name,email\nc-y,Y,y@customer.example\nc-w,W,w@customer.example\nc-y,Y2,y2@customer.example\n",
            "line 4: id: 'c-y' is also the id of line 2",
        ),
        (
            "application/json",
            r#"[{"id": "c-y", "name": "Y", "email": "y@customer.example"}, {"id": "c-y", "name": "Y2", "email": "y2@customer.example"}]"#,
            "rows[1].id: 'c-y' is also the id of rows[0]",
        ),
    ] {
        let (s, b) = import(&app, "/api/v1/admin/contacts/import", kind, body).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{b}");
        let m = b["error"]["message"].as_str().unwrap_or_default();
        assert!(m.starts_with(says), "{kind}: {m}");
        assert_eq!(
            app.count("SELECT count(*) FROM contacts WHERE id = 'c-y'")
                .await,
            0,
            "all or none: {m}"
        );
    }
    let (s, b) = import(
        &app,
        "/api/v1/admin/contacts/import",
        "text/csv",
        "id,name,email,phone,company,postal_address\nc-john,John Doe,john@customer.example,0041 44 000 00 00,ACME,\"Bahnhofstrasse 1, 8001 Zürich\"\n",
    )
    .await;
    assert_eq!(
        (s, b["imported"].as_u64()),
        (StatusCode::OK, Some(1)),
        "{b}"
    );

    // A call from a number in the directory, in any spelling.
    let t = call(&app, "support", json!({"phone": "+41 44 111 22 33"})).await;
    let v = task(&app, ADMIN, &t).await;
    assert_eq!(v["customer"]["kind"], "internal", "{v}");
    assert_eq!(v["customer"]["ref"], "ursula");
    assert_eq!(v["customer"]["name"], "Ursula Intern");
    assert_eq!(v["customer"]["upn"], "ursula@tenant.example");
    assert_eq!(v["customer"]["phone"], "+41441112233");
    assert_eq!(v["system_parameters"]["reached"], "+41 44 999 00 00");
    assert_eq!(v["system_parameters"]["modality"], "call");
    // An IM from the same person, by UPN.
    let (s, b) = app
        .post(ADMIN, "/api/v1/tasks", json!({"service": "support", "modality": "im", "customer": {"upn": "URSULA@tenant.example"}}))
        .await;
    assert_eq!(
        (s, b["customer"]["ref"].as_str()),
        (StatusCode::CREATED, Some("ursula")),
        "{b}"
    );
    // A call from a number in the address book, written nationally.
    let t = call(&app, "support", json!({"phone": "044 000 00 00"})).await;
    let v = task(&app, ADMIN, &t).await;
    assert_eq!(v["customer"]["kind"], "external", "{v}");
    assert_eq!(v["customer"]["name"], "John Doe");
    assert_eq!(v["customer"]["email"], "john@customer.example");
    assert_eq!(v["customer"]["company"], "ACME");
    assert_eq!(
        v["customer"]["postal_address"],
        "Bahnhofstrasse 1, 8001 Zürich"
    );
    assert_eq!(v["customer"]["phone"], "+41440000000");
    // An unknown number: anonymous, with the known details only.
    let t = call(&app, "support", json!({"address": "+1 (555) 010-0200"})).await;
    let v = task(&app, ADMIN, &t).await;
    assert_eq!(v["customer"]["kind"], "anonymous", "{v}");
    assert_eq!(v["customer"]["name"], Value::Null);
    assert_eq!(v["customer"]["email"], Value::Null);
    assert_eq!(v["customer"]["phone"], "+15550100200");
    assert_eq!(v["customer"]["display"], "+1 (555) 010-0200");
    assert_eq!(v["context"]["available"], true);
    // A call given an e-mail address beside its number is shown by the number.
    let t = call(
        &app,
        "support",
        json!({"email": "Zoe@Customer.example", "phone": "+1 555 010 0300"}),
    )
    .await;
    let v = task(&app, ADMIN, &t).await;
    assert_eq!(v["customer"]["address"], "+15550100300", "{v}");
    assert_eq!(v["customer"]["display"], "+15550100300", "{v}");
    assert_eq!(v["customer"]["email"], "zoe@customer.example");
    // A number that is none is refused, naming the field.
    let (s, b) = app
        .post(
            ADMIN,
            "/api/v1/tasks",
            json!({"service": "support", "modality": "call", "customer": {"phone": "call me"}}),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{b}");
    assert!(
        b["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("customer.phone: contains 'c'"),
        "{b}"
    );

    // GetContacts: by name, e-mail or any spelling of the number.
    for q in [
        "john",
        "CUSTOMER.example",
        "0041440000000",
        "+41 44 000 00 00",
    ] {
        let (s, b) = app
            .get(
                &token("alice"),
                &format!("/api/v1/contacts?q={}", urlencode(q)),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{b}");
        assert_eq!(b["items"][0]["id"], "c-john", "{q}: {b}");
    }
    // A name with capitals beyond ASCII, in any case.
    let (s, b) = import(
        &app,
        "/api/v1/admin/contacts/import",
        "application/json",
        r#"[{"id": "c-elodie", "name": "Élodie Östberg", "email": "elodie@customer.example"}]"#,
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    for q in ["Élodie", "élodie", "ÖSTBERG", "é"] {
        let (s, b) = app
            .get(
                &token("alice"),
                &format!("/api/v1/contacts?q={}", urlencode(q)),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{b}");
        assert_eq!(b["items"][0]["id"], "c-elodie", "{q}: {b}");
    }
    let (s, b) = app.get(CRM, "/api/v1/contacts?q=doe").await;
    assert_eq!(
        (s, b["items"].as_array().map(Vec::len)),
        (StatusCode::OK, Some(1)),
        "{b}"
    );
    let (s, b) = app.get(READER, "/api/v1/contacts?q=doe").await;
    assert_eq!(
        s,
        StatusCode::FORBIDDEN,
        "a reader without contacts:read: {b}"
    );
    let (s, _) = app.get(&token("alice"), "/api/v1/contacts?q=").await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    app.stop().await;
}

fn urlencode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

async fn update_task_live_and_concluded(db: Db) {
    let app = start(db, |u| {
        config(
            u,
            "",
            &[&format!("id = \"support\"\nname = \"Support\"\n{PICKUP}")],
            &[("alice", "support")],
        )
    })
    .await;
    let t = call(&app, "support", json!({"phone": "+41 44 555 00 00"})).await;
    let path = format!("/api/v1/tasks/{t}");
    // The integration sets customer fields and parameters of the live task.
    let (s, v) = patch(
        &app,
        CRM,
        &path,
        json!({"customer": {"name": "John Doe", "email": "John@Customer.example", "postal_address": "Main St 1\r\n8001 Zürich"},
               "parameters": {"TicketId": "#1111", "Priority": 2, "Vip": true}}),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["customer"]["postal_address"], "Main St 1\n8001 Zürich");
    assert_eq!(v["customer"]["name"], "John Doe");
    assert_eq!(v["customer"]["email"], "john@customer.example");
    assert_eq!(
        v["parameters"],
        json!({"TicketId": "#1111", "Priority": 2, "Vip": true})
    );
    assert_eq!(v["context"]["parameters"]["custom"]["TicketId"], "#1111");
    // Another update merges; null removes a parameter, "" clears a field.
    let (s, v) = patch(&app, CRM, &path, json!({"customer": {"postal_address": ""}, "parameters": {"Vip": null, "TicketId": "#2222"}})).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["parameters"], json!({"TicketId": "#2222", "Priority": 2}));
    assert_eq!(v["customer"]["postal_address"], Value::Null);
    assert_eq!(v["customer"]["email"], "john@customer.example");
    // Integrations read tasks too; the reader may not write; agents may not either.
    assert_eq!(
        task(&app, READER, &t).await["parameters"]["TicketId"],
        "#2222"
    );
    let (s, b) = patch(&app, READER, &path, json!({"parameters": {"A": "1"}})).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{b}");
    let (s, b) = patch(
        &app,
        &token("alice"),
        &path,
        json!({"parameters": {"A": "1"}}),
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{b}");
    // With tasks:write an integration is a channel (telephony): it posts a
    // call, records its outcome and cancels; the reader may not.
    let call = json!({"service": "support", "modality": "call", "external_id": "call-crm-1",
                      "customer": {"name": "Caller", "phone": "+41 44 000 00 01"}});
    let (s, b) = app.post(READER, "/api/v1/tasks", call.clone()).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{b}");
    let (s, b) = app.post(CRM, "/api/v1/tasks", call.clone()).await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    let call_id = b["id"].as_str().expect("the call's task").to_string();
    // A task posted with an outcome is made with it or not at all: an
    // unknown agent or result leaves nothing behind, and the retry with the
    // same external_id then creates it with its outcome.
    let answered = |agent: &str, result: &str| {
        json!({"service": "support", "modality": "call", "external_id": "call-crm-2",
               "outcome": {"agent": agent, "result": result}})
    };
    for (agent, result, says) in [
        (
            "nobody",
            "accepted",
            "outcome.agent: unknown agent 'nobody'",
        ),
        (
            "admin",
            "accepted",
            "outcome.agent: agent 'admin' is not a member of service 'support'",
        ),
        ("alice", "withdrawn", "outcome.result"),
    ] {
        let (s, b) = app
            .post(CRM, "/api/v1/tasks", answered(agent, result))
            .await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{b}");
        assert!(
            b["error"]["message"].as_str().unwrap().contains(says),
            "{says}: {b}"
        );
    }
    assert_eq!(
        app.count("SELECT count(*) FROM tasks WHERE external_id = 'call-crm-2'")
            .await,
        0,
        "no task without its outcome"
    );
    let (s, b) = app
        .post(CRM, "/api/v1/tasks", answered("alice", "declined"))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    assert_eq!(session_of(&b, "alice")["result"], "declined", "{b}");
    let (s, b) = app
        .post(
            CRM,
            &format!("/api/v1/tasks/{call_id}/outcome"),
            json!({"agent": "alice", "result": "declined"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let (s, b) = app
        .post(
            READER,
            &format!("/api/v1/tasks/{call_id}/cancel"),
            json!({}),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{b}");
    let (s, b) = app
        .post(CRM, &format!("/api/v1/tasks/{call_id}/cancel"), json!({}))
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    // An integration that may write but not read tasks learns only which
    // task it changed, and its state: not the customer, the parameters or
    // the sessions (telephony posting calls needs no more).
    let receipt_only = |b: &Value| {
        let keys: Vec<&str> = b
            .as_object()
            .map_or(Vec::new(), |o| o.keys().map(String::as_str).collect());
        assert_eq!(
            keys,
            vec![
                "external_id",
                "id",
                "modality",
                "service",
                "state",
                "updated_at"
            ],
            "{b}"
        );
    };
    let (s, b) = patch(&app, WRITER, &path, json!({"parameters": {"Seen": "no"}})).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    receipt_only(&b);
    assert_eq!(b["id"], t.as_str());
    let (s, b) = app.get(WRITER, &path).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{b}");
    let posted = json!({"service": "support", "modality": "call", "external_id": "call-writer-1",
                        "customer": {"name": "Caller", "phone": "+41 44 000 00 02"},
                        "outcome": {"agent": "alice", "result": "declined"}});
    let (s, b) = app.post(WRITER, "/api/v1/tasks", posted).await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    receipt_only(&b);
    let written = b["id"].as_str().unwrap_or_default().to_string();
    let (s, b) = app
        .post(
            WRITER,
            &format!("/api/v1/tasks/{written}/outcome"),
            json!({"agent": "alice", "result": "declined"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    receipt_only(&b);
    let (s, b) = app
        .post(
            WRITER,
            &format!("/api/v1/tasks/{written}/cancel"),
            json!({}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    receipt_only(&b);
    assert_eq!(b["state"], "cancelled", "{b}");
    // The integration token opens nothing else: it is known (403, not
    // 401), and the answer says why.
    let (s, b) = app.get(CRM, "/api/v1/me/sessions").await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{b}");
    assert_eq!(
        b["error"]["message"],
        "integration 'crm' may not use this endpoint: integration tokens reach only the endpoints of their scopes (tasks:read, tasks:write, contacts:read)"
    );
    let (s, _) = app.get(WRITER, "/api/v1/tasks").await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _) = app
        .get("not-a-token-of-anyone", "/api/v1/me/sessions")
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    // An integration's token cannot become an agent's too.
    let (s, b) = app
        .put(
            ADMIN,
            "/api/v1/admin/agents/evil",
            json!({"name": "Evil", "email": "evil@example.com", "token": CRM, "admin": true}),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{b}");
    assert_eq!(
        app.get(ADMIN, "/api/v1/admin/agents/evil").await.0,
        StatusCode::NOT_FOUND
    );
    // Who may call is checked before the body is read: 403, never a 422
    // about a body the caller was not allowed to send.
    let (s, b) = app
        .post(
            READER,
            "/api/v1/tasks",
            json!({"service": "support", "modality": "fax"}),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{b}");
    let (s, b) = app
        .put(
            &token("alice"),
            "/api/v1/admin/services/zz",
            json!({"name": 5}),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{b}");
    // Nor can a name turn the page's text around.
    let (s, b) = app
        .put(
            ADMIN,
            "/api/v1/admin/agents/evil",
            json!({"name": "e\u{202E}vil", "email": "evil@example.com"}),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{b}");
    // An admin may update too.
    let (s, b) = patch(&app, ADMIN, &path, json!({"parameters": {"Note": "admin"}})).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    // Bad input: the field and the limit, never the whole value.
    for (body, expected) in [
        (
            json!({"parameters": {"Ticket Id": "x"}}),
            "parameters.Ticket Id: a parameter name may not contain ' '",
        ),
        (
            json!({"parameters": {"T": "x".repeat(1001)}}),
            "parameters.T: is longer than 1000 characters",
        ),
        (
            json!({"parameters": {"T": {"nested": 1}}}),
            "parameters.T: must be text, a number or true/false",
        ),
        (
            json!({"customer": {"phone": "12"}}),
            "customer.phone: has 2 digits: a phone number has 6 to 15",
        ),
        (
            json!({"customer": {"email": "nope"}}),
            "customer.email: is not an e-mail address",
        ),
        (
            json!({"customer": {"address": "x@y.example"}}),
            "customer.address: cannot change",
        ),
        (json!({}), "nothing to update"),
    ] {
        let (s, b) = patch(&app, CRM, &path, body).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{b}");
        let m = b["error"]["message"].as_str().unwrap();
        assert!(m.starts_with(expected), "{m}");
        assert!(m.len() < 300, "{m}");
    }
    let (s, b) = patch(&app, CRM, &path, json!({"colour": "red"})).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{b}");
    assert!(
        b["error"]["message"]
            .as_str()
            .unwrap()
            .contains("unknown field `colour`"),
        "{b}"
    );
    let many: serde_json::Map<String, Value> =
        (0..51).map(|i| (format!("p{i}"), json!(i))).collect();
    let (s, b) = patch(&app, CRM, &path, json!({"parameters": many})).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{b}");
    // The same limit for a task posted with them (it could never be updated).
    let (s, b) = app
        .post(
            ADMIN,
            "/api/v1/tasks",
            json!({"service": "support", "modality": "call", "parameters": many}),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{b}");
    assert_eq!(
        b["error"]["message"], "parameters: 51 given, at most 50",
        "{b}"
    );
    // Every update is a change of the task, for the webhooks (the CRM's
    // three and the writer's one).
    assert_eq!(
        app.count(&format!(
            "SELECT count(*) FROM task_changes WHERE task_id = '{t}' AND kind = 'task.updated'"
        ))
        .await,
        4
    );
    // Concluded: refused.
    let session = app.pickup(&token("alice"), &t).await;
    ok(
        &app,
        &token("alice"),
        &format!("/api/v1/tasks/{t}/handled"),
        Value::Null,
    )
    .await;
    let (s, b) = patch(
        &app,
        CRM,
        &path,
        json!({"parameters": {"After": "wrap-up"}}),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "wrap-up is still live: {b}");
    ok(
        &app,
        &token("alice"),
        &format!("/api/v1/sessions/{session}/save"),
        Value::Null,
    )
    .await;
    let (s, b) = patch(
        &app,
        CRM,
        &path,
        json!({"parameters": {"TicketId": "#3333"}}),
    )
    .await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (StatusCode::CONFLICT, Some("conflict")),
        "{b}"
    );
    let (s, b) = patch(
        &app,
        CRM,
        "/api/v1/tasks/tsk_nope",
        json!({"parameters": {"A": "1"}}),
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{b}");
    app.stop().await;
}

async fn context_links_fill_every_placeholder_and_keep_hostile_values_in_place(db: Db) {
    let links = r#"context_links = [
  { label = "CRM", url_template = "https://crm.example/search?email=$(Customer.Email)&phone=$(Customer.Phone)&name=$(Customer.Name)" },
  { label = "Ticket", url_template = "https://tickets.example/t/$(Parameters.TicketId)#task=$(Task.Id)", embed = true },
  { label = "Caller", url_template = "https://dir.example/u/$(Customer.Upn)" },
  { label = "Lookup", url_template = "https://dir.example/find?q=$(Customer.Upn)", when_missing = "empty" },
  { label = "Where", kind = "map" },
]"#;
    let app = start(db, |u| {
        config(
            u,
            "",
            &[&format!(
                "id = \"support\"\nname = \"Support\"\n{PICKUP}\n{links}"
            )],
            &[("alice", "support")],
        )
    })
    .await;
    let name = "John \"JJ\" Doe & Co #1";
    let ticket = "javascript:alert(1)/../x?y=1&z#w";
    let (s, b) = app
        .post(
            ADMIN,
            "/api/v1/tasks",
            json!({"service": "support", "modality": "call",
                   "customer": {"name": name, "email": "a&b@customer.example", "phone": "+41 44 000 00 00", "ip": "203.0.113.9"},
                   "parameters": {"TicketId": ticket}}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    let t = b["id"].as_str().unwrap().to_string();
    let v = task(&app, ADMIN, &t).await;
    let resolved = v["context"]["context_links"].as_array().unwrap().clone();
    let labels: Vec<&str> = resolved
        .iter()
        .map(|l| l["label"].as_str().unwrap())
        .collect();
    // "Caller" has no UPN: left out; "Lookup" keeps an empty value.
    assert_eq!(labels, ["CRM", "Ticket", "Lookup", "Where"], "{v}");
    let url_of = |label: &str| {
        let l = resolved.iter().find(|l| l["label"] == label).unwrap();
        url::Url::parse(l["url"].as_str().unwrap()).unwrap()
    };
    let crm = url_of("CRM");
    assert_eq!(
        (crm.scheme(), crm.host_str()),
        ("https", Some("crm.example"))
    );
    let pairs: Vec<(String, String)> = crm
        .query_pairs()
        .map(|(k, v)| (k.into(), v.into()))
        .collect();
    assert_eq!(
        pairs,
        [
            ("email".to_string(), "a&b@customer.example".to_string()),
            ("phone".into(), "+41440000000".into()),
            ("name".into(), name.into()),
        ]
    );
    assert!(crm.fragment().is_none());
    let tk = url_of("Ticket");
    assert_eq!(
        (tk.scheme(), tk.host_str()),
        ("https", Some("tickets.example"))
    );
    let segments: Vec<&str> = tk.path_segments().unwrap().collect();
    assert_eq!(segments.len(), 2, "one segment for the value: {tk}");
    assert_eq!(
        percent_encoding::percent_decode_str(segments[1])
            .decode_utf8()
            .unwrap(),
        ticket
    );
    assert!(tk.query().is_none(), "{tk}");
    assert_eq!(tk.fragment(), Some(format!("task={t}").as_str()));
    let ticket_link = resolved.iter().find(|l| l["label"] == "Ticket").unwrap();
    assert_eq!(ticket_link["embed"], true);
    let lookup = resolved.iter().find(|l| l["label"] == "Lookup").unwrap();
    assert_eq!(lookup["url"], "https://dir.example/find?q=");
    assert_eq!(lookup["missing"], json!(["Customer.Upn"]));
    let map = resolved.iter().find(|l| l["label"] == "Where").unwrap();
    assert_eq!(map["kind"], "map");
    assert_eq!(
        map["url"],
        "https://www.google.com/maps/search/?api=1&query=203.0.113.9"
    );
    // Agents holding the task see the same links in their session.
    let session = app.pickup(&token("alice"), &t).await;
    let mine = task(&app, &token("alice"), &t).await;
    assert_eq!(session_of(&mine, "alice")["id"], session.as_str());
    assert_eq!(
        session_of(&mine, "alice")["context"]["context_links"],
        json!(resolved)
    );

    // An unknown placeholder is refused when the service is saved.
    let (s, b) = app
        .put(
            ADMIN,
            "/api/v1/admin/services/support",
            json!({"name": "Support", "distribution": "pickup",
                   "context_links": [{"label": "OK", "url_template": "https://ok.example/"},
                                     {"label": "Bad", "url_template": "https://crm.example/$(Customer.Fax)"}]}),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{b}");
    assert!(
        b["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("context_links[1].url_template: unknown placeholder $(Customer.Fax)"),
        "{b}"
    );
    for (template, why) in [
        ("javascript:$(Customer.Name)", "must start with https://"),
        ("https://$(Customer.Email)/", "in the host"),
    ] {
        let (s, b) = app
            .put(ADMIN, "/api/v1/admin/services/support", json!({"name": "Support", "context_links": [{"label": "X", "url_template": template}]}))
            .await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{b}");
        assert!(b["error"]["message"].as_str().unwrap().contains(why), "{b}");
    }
    app.stop().await;
}

async fn context_not_kept_is_not_available_right_after_conclusion(db: Db) {
    let app = start(db, |u| {
        config(
            u,
            "",
            &[&format!(
                "id = \"support\"\nname = \"Support\"\n{PICKUP}\ncontext_links = [{{ label = \"T\", url_template = \"https://t.example/$(Parameters.TicketId)\" }}]"
            )],
            &[("alice", "support")],
        )
    })
    .await;
    let t = call(
        &app,
        "support",
        json!({"phone": "+41 44 000 11 22", "name": "Caller"}),
    )
    .await;
    patch(
        &app,
        CRM,
        &format!("/api/v1/tasks/{t}"),
        json!({"customer": {"email": "c@customer.example"}, "parameters": {"TicketId": "42"}}),
    )
    .await;
    let session = app.pickup(&token("alice"), &t).await;
    let live = task(&app, &token("alice"), &t).await;
    let mine = &session_of(&live, "alice")["context"];
    assert_eq!(
        (mine["available"].as_bool(), mine["source"].as_str()),
        (Some(true), Some("live")),
        "{live}"
    );
    assert_eq!(mine["customer"]["email"], "c@customer.example");
    assert_eq!(mine["context_links"][0]["url"], "https://t.example/42");
    ok(
        &app,
        &token("alice"),
        &format!("/api/v1/tasks/{t}/handled"),
        Value::Null,
    )
    .await;
    ok(
        &app,
        &token("alice"),
        &format!("/api/v1/sessions/{session}/save"),
        Value::Null,
    )
    .await;
    // Right after: "not available", the name stays.
    let after = task(&app, &token("alice"), &t).await;
    assert_eq!(after["state"], "concluded");
    let mine = &session_of(&after, "alice")["context"];
    assert_eq!(mine["available"], false, "{after}");
    assert_eq!(mine["reason"], "not_kept");
    assert_eq!(mine["customer"]["name"], "Caller");
    assert_eq!(mine["customer"]["email"], Value::Null);
    assert_eq!(mine["parameters"], Value::Null);
    assert_eq!(mine["context_links"], json!([]));
    for field in [
        "customer.email",
        "customer.phone",
        "parameters",
        "context_links",
    ] {
        assert!(
            mine["not_available"]
                .as_array()
                .unwrap()
                .contains(&json!(field)),
            "{field}: {mine}"
        );
    }
    assert_eq!(after["context"]["available"], false);
    assert_eq!(after["context"]["reason"], "ended");
    assert_eq!(after["parameters"], json!({}));
    // Not in the database either: the task's live context is gone, nothing was kept.
    assert_eq!(app.count(&format!("SELECT count(*) FROM tasks WHERE id = '{t}' AND params = '{{}}' AND customer_details = '{{}}'")).await, 1);
    assert_eq!(
        app.count(&format!("SELECT count(*) FROM context_records WHERE task_id = '{t}' AND keep_days = 0 AND params IS NULL AND customer_details IS NULL")).await,
        1
    );
    // A cancelled task follows the same rule.
    let gone = call(&app, "support", json!({"phone": "+41 44 000 11 23"})).await;
    patch(
        &app,
        CRM,
        &format!("/api/v1/tasks/{gone}"),
        json!({"parameters": {"TicketId": "7"}}),
    )
    .await;
    ok(
        &app,
        ADMIN,
        &format!("/api/v1/tasks/{gone}/cancel"),
        Value::Null,
    )
    .await;
    let v = task(&app, ADMIN, &gone).await;
    assert_eq!(
        (v["state"].as_str(), v["context"]["available"].as_bool()),
        (Some("cancelled"), Some(false)),
        "{v}"
    );
    assert_eq!(
        app.count(&format!(
            "SELECT count(*) FROM tasks WHERE id = '{gone}' AND params = '{{}}'"
        ))
        .await,
        1
    );
    app.stop().await;
}

async fn kept_context_is_there_then_gone_after_its_days(db: Db) {
    // A "day" of five seconds; the retention job looks every second.
    let app = start(db, |u| {
        config(
            u,
            "[context]\nday_secs = 5\nretention_interval_secs = 1",
            &[
                &format!("id = \"support\"\nname = \"Support\"\n{PICKUP}\nkeep_context_days = 1\ncontext_links = [{{ label = \"T\", url_template = \"https://t.example/$(Parameters.TicketId)\" }}]"),
                &format!("id = \"archive\"\nname = \"Archive\"\n{PICKUP}\nkeep_context_days = 30"),
            ],
            &[("alice", "support"), ("arne", "archive")],
        )
    })
    .await;
    let conclude = |t: String, agent: &'static str| {
        let app = &app;
        async move {
            let session = app.pickup(&token(agent), &t).await;
            ok(
                app,
                &token(agent),
                &format!("/api/v1/tasks/{t}/handled"),
                Value::Null,
            )
            .await;
            save(app, agent, &session).await;
        }
    };
    let t = call(
        &app,
        "support",
        json!({"phone": "+41 44 000 33 44", "name": "Kept"}),
    )
    .await;
    patch(
        &app,
        CRM,
        &format!("/api/v1/tasks/{t}"),
        json!({"customer": {"email": "k@customer.example"}, "parameters": {"TicketId": "77"}}),
    )
    .await;
    // Stored context resolves with the templates configured now.
    conclude(t.clone(), "alice").await;
    let (s, b) = app
        .put(ADMIN, "/api/v1/admin/services/support", json!({"name": "Support", "distribution": "pickup", "keep_context_days": 0,
             "context_links": [{"label": "T2", "url_template": "https://t2.example/?id=$(Parameters.TicketId)"}]}))
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let v = task(&app, &token("alice"), &t).await;
    let kept = &session_of(&v, "alice")["context"];
    assert_eq!(
        (kept["available"].as_bool(), kept["source"].as_str()),
        (Some(true), Some("stored")),
        "{v}"
    );
    assert_eq!(kept["customer"]["email"], "k@customer.example");
    assert_eq!(kept["parameters"]["custom"]["TicketId"], "77");
    assert_eq!(
        kept["context_links"][0]["url"], "https://t2.example/?id=77",
        "current templates"
    );
    assert!(kept["kept_until"].is_string());
    // Not retroactive: turning the opt-in off kept what was stored (above);
    // turning it on does not bring back what was not.
    let t2 = call(&app, "support", json!({"phone": "+41 44 000 33 45"})).await;
    patch(
        &app,
        CRM,
        &format!("/api/v1/tasks/{t2}"),
        json!({"parameters": {"TicketId": "78"}}),
    )
    .await;
    conclude(t2.clone(), "alice").await;
    let (s, _) = app
        .put(
            ADMIN,
            "/api/v1/admin/services/support",
            json!({"name": "Support", "distribution": "pickup", "keep_context_days": 1}),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let v2 = task(&app, &token("alice"), &t2).await;
    assert_eq!(
        session_of(&v2, "alice")["context"]["available"],
        false,
        "{v2}"
    );
    // A kept record's customer name is resolved again from the directory.
    let (s, b) = app
        .put(
            ADMIN,
            "/api/v1/admin/directory/u-vera",
            json!({"name": "Vera Before", "phone": "+41 44 000 33 48"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let v = call(&app, "archive", json!({"phone": "+41 44 000 33 48"})).await;
    conclude(v.clone(), "arne").await;
    let (s, b) = app
        .put(
            ADMIN,
            "/api/v1/admin/directory/u-vera",
            json!({"name": "Vera After", "phone": "+41 44 000 33 48"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let seen = task(&app, &token("arne"), &v).await;
    let kept = &session_of(&seen, "arne")["context"];
    assert_eq!(kept["source"], "stored", "{seen}");
    assert_eq!(kept["customer"]["name"], "Vera After", "{seen}");
    // Deleting a service deletes its stored context at once.
    let a = call(&app, "archive", json!({"phone": "+41 44 000 33 46"})).await;
    patch(
        &app,
        CRM,
        &format!("/api/v1/tasks/{a}"),
        json!({"parameters": {"TicketId": "79"}}),
    )
    .await;
    conclude(a.clone(), "arne").await;
    assert_eq!(
        session_of(&task(&app, ADMIN, &a).await, "arne")["context"]["available"],
        true
    );
    let (s, b) = app.get(&token("arne"), "/api/v1/me/services").await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let (s, b) = delete(&app, ADMIN, "/api/v1/admin/services/archive").await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{b}");
    // A member's page still reads their services at once (their memberships
    // are read once every few seconds): the deleted one is left out.
    let (s, b) = app.get(&token("arne"), "/api/v1/me/services").await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert!(
        !b["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["id"] == "archive"),
        "{b}"
    );
    assert_eq!(
        app.count(&format!("SELECT count(*) FROM context_records WHERE task_id = '{a}' AND params IS NULL AND purged_at IS NOT NULL")).await,
        1
    );
    assert_eq!(
        session_of(&task(&app, ADMIN, &a).await, "arne")["context"]["available"],
        false
    );
    let (s, _) = app.get(ADMIN, "/api/v1/admin/services/archive").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    // A service with live tasks cannot be deleted.
    let live = call(&app, "support", json!({"phone": "+41 44 000 33 47"})).await;
    let (s, b) = delete(&app, ADMIN, "/api/v1/admin/services/support").await;
    assert_eq!(s, StatusCode::CONFLICT, "{b}");
    ok(
        &app,
        ADMIN,
        &format!("/api/v1/tasks/{live}/cancel"),
        Value::Null,
    )
    .await;

    // After its days, the retention job empties the record.
    let sql = format!(
        "SELECT count(*) FROM context_records WHERE task_id = '{t}' AND purged_at IS NOT NULL AND params IS NULL AND customer_details IS NULL"
    );
    eventually(Duration::from_secs(30), "the retention job", || async {
        app.count(&sql).await == 1
    })
    .await;
    let v = task(&app, &token("alice"), &t).await;
    let gone = &session_of(&v, "alice")["context"];
    assert_eq!(
        (gone["available"].as_bool(), gone["reason"].as_str()),
        (Some(false), Some("expired")),
        "{v}"
    );
    assert_eq!(gone["customer"]["name"], "Kept");
    // Once per period, whoever gets it.
    assert_eq!(app.count("SELECT count(*) FROM periodic_jobs WHERE name = 'retention' AND last_worker IS NOT NULL").await, 1);
    app.stop().await;
}

/// `agent` saves their session.
async fn save(app: &TestApp, agent: &str, session: &str) {
    ok(
        app,
        &token(agent),
        &format!("/api/v1/sessions/{session}/save"),
        Value::Null,
    )
    .await;
}

/// An agent whose part ended while the task stayed in the service (handed
/// to a colleague there) keeps what was known when it ended: never what the
/// colleague learns afterwards.
async fn a_part_over_in_the_same_service_keeps_what_it_knew(db: Db) {
    let app = start(db, |u| {
        config(
            u,
            "",
            &[&format!(
                "id = \"a\"\nname = \"A\"\n{PICKUP}\nkeep_context_days = 30"
            )],
            &[("anna", "a"), ("arno", "a")],
        )
    })
    .await;
    let t = call(&app, "a", json!({"phone": "+41 44 000 88 88"})).await;
    let path = format!("/api/v1/tasks/{t}");
    let sa = app.pickup(&token("anna"), &t).await;
    let (s, b) = patch(
        &app,
        CRM,
        &path,
        json!({"customer": {"name": "John Doe"}, "parameters": {"TicketId": "#1111"}}),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let (s, b) = app
        .put(
            &token("arno"),
            "/api/v1/me/presence",
            json!({"status": "available"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    ok(
        &app,
        &token("anna"),
        &format!("{path}/transfer"),
        json!({"agent": "arno"}),
    )
    .await;
    let (_, me) = app
        .get(&token("arno"), "/api/v1/me/sessions?state=live")
        .await;
    let offer = me["items"][0]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("{me}"))
        .to_string();
    ok(
        &app,
        &token("arno"),
        &format!("/api/v1/offers/{offer}/accept"),
        Value::Null,
    )
    .await;
    // Arno learns more.
    let (s, b) = patch(
        &app,
        CRM,
        &path,
        json!({"customer": {"name": "Renamed", "email": "private@example.org"}, "parameters": {"Secret": "arno-era", "TicketId": "#2222"}}),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let arno = task(&app, &token("arno"), &t).await;
    assert_eq!(
        arno["context"]["parameters"]["custom"]["Secret"], "arno-era",
        "{arno}"
    );
    // In her wrap-up (picking codes) and after she saved.
    for saved in [false, true] {
        if saved {
            save(&app, "anna", &sa).await;
        }
        let anna = task(&app, &token("anna"), &t).await;
        let text = anna.to_string();
        for later in ["arno-era", "private@example.org", "Renamed", "#2222"] {
            assert!(!text.contains(later), "{later} leaked to anna: {anna}");
        }
        let mine = &session_of(&anna, "anna")["context"];
        assert_eq!(mine["source"], "stored", "{anna}");
        assert_eq!(
            mine["parameters"]["custom"],
            json!({"TicketId": "#1111"}),
            "{anna}"
        );
        assert_eq!(anna["context"]["customer"]["name"], "John Doe", "{anna}");
    }
    // Admins see each session as it was: Anna's stored, Arno's live.
    let all = task(&app, ADMIN, &t).await;
    assert_eq!(
        session_of(&all, "anna")["context"]["source"],
        "stored",
        "{all}"
    );
    assert_eq!(
        session_of(&all, "arno")["context"]["source"],
        "live",
        "{all}"
    );
    app.stop().await;
}

async fn transfer_accumulates_context_per_service(db: Db) {
    let app = start(db, |u| {
        config(
            u,
            "",
            &[
                &format!("id = \"a\"\nname = \"A\"\n{PICKUP}\nkeep_context_days = 30"),
                &format!("id = \"b\"\nname = \"B\"\n{PICKUP}"),
                &format!("id = \"c\"\nname = \"C\"\n{PICKUP}\nkeep_context_days = 30"),
            ],
            &[("anna", "a"), ("ben", "b"), ("cleo", "c")],
        )
    })
    .await;
    let t = call(&app, "a", json!({"phone": "+41 44 000 99 99"})).await;
    let path = format!("/api/v1/tasks/{t}");
    // Service A (keeps context) sets Customer Name, Spoken Language, Ticket ID.
    let sa = app.pickup(&token("anna"), &t).await;
    let (s, b) = patch(&app, CRM, &path, json!({"customer": {"name": "John Doe"}, "parameters": {"SpokenLanguage": "German", "TicketId": "#1111"}})).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    ok(
        &app,
        &token("anna"),
        &format!("{path}/transfer"),
        json!({"service": "b"}),
    )
    .await;
    // A move to another service is that service's record only.
    assert_eq!(
        app.count(&format!(
            "SELECT count(*) FROM context_records WHERE task_id = '{t}' AND session_id IS NOT NULL"
        ))
        .await,
        0
    );
    // Service B (keeps nothing) gets the live context, sets Gender and overwrites Ticket ID.
    let sb = app.pickup(&token("ben"), &t).await;
    let in_b = task(&app, &token("ben"), &t).await;
    assert_eq!(
        session_of(&in_b, "ben")["context"]["parameters"]["custom"],
        json!({"SpokenLanguage": "German", "TicketId": "#1111"}),
        "the context travels"
    );
    let (s, b) = patch(
        &app,
        CRM,
        &path,
        json!({"parameters": {"Gender": "Male", "TicketId": "#3151"}}),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    ok(
        &app,
        &token("ben"),
        &format!("{path}/transfer"),
        json!({"service": "c"}),
    )
    .await;
    // Service C (keeps context) has the call now, and telephony learns
    // another name: that is C's to see, not the earlier parts'.
    let sc = app.pickup(&token("cleo"), &t).await;
    let (s, b) = patch(&app, CRM, &path, json!({"customer": {"name": "Jane Roe"}})).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    for agent in ["anna", "ben"] {
        let (_, list) = app.get(&token(agent), "/api/v1/me/sessions").await;
        assert_eq!(
            list["items"][0]["customer"]["name"], "John Doe",
            "{agent}: {list}"
        );
        let (_, found) = app.get(&token(agent), "/api/v1/me/sessions?q=jane").await;
        assert_eq!(found["items"], json!([]), "{agent}: {found}");
        let mine = task(&app, &token(agent), &t).await;
        assert_eq!(mine["customer"]["name"], "John Doe", "{agent}: {mine}");
        assert_eq!(
            mine["context"]["customer"]["name"], "John Doe",
            "{agent}: {mine}"
        );
        assert_eq!(
            mine["sessions"][0]["customer"]["name"], "John Doe",
            "{agent}: {mine}"
        );
    }
    let (_, list) = app.get(&token("cleo"), "/api/v1/me/sessions").await;
    assert_eq!(list["items"][0]["customer"]["name"], "Jane Roe", "{list}");
    // Ben, in wrap-up after his transfer, no longer sees what the task
    // holds now (nor does Anna).
    let ben = task(&app, &token("ben"), &t).await;
    assert_eq!(ben["context"]["available"], false, "{ben}");
    assert_eq!(ben["parameters"], json!({}), "{ben}");
    assert_eq!(ben["system_parameters"]["service"], "b", "{ben}");
    assert_eq!(ben["system_parameters"]["service_name"], "B", "{ben}");
    assert_eq!(ben["service"], "b", "{ben}");
    // Anna and Ben save their parts while Cleo has the call: from then on
    // they see the task as their own part left it (what their service kept,
    // else "not available"), not what it holds now, nor its parameters.
    for (agent, session) in [("anna", &sa), ("ben", &sb)] {
        save(&app, agent, session).await;
    }
    // Their saves are told with the service of their part, not the task's now.
    for (agent, service) in [("anna", "a"), ("ben", "b")] {
        let sql = format!(
            "SELECT count(*) FROM task_changes WHERE kind = 'session.saved' AND agent_id = '{agent}' \
             AND (CAST(payload AS TEXT) LIKE '%\"service\":\"{service}\"%' \
                  OR CAST(payload AS TEXT) LIKE '%\"service\": \"{service}\"%')"
        );
        assert_eq!(app.count(&sql).await, 1, "{agent}");
    }
    let anna = task(&app, &token("anna"), &t).await;
    assert_eq!(anna["context"]["source"], "stored", "{anna}");
    assert_eq!(anna["system_parameters"]["service"], "a", "{anna}");
    assert_eq!(
        anna["context"]["parameters"]["custom"],
        json!({"SpokenLanguage": "German", "TicketId": "#1111"})
    );
    assert_eq!(anna["parameters"], json!({}), "{anna}");
    let ben = task(&app, &token("ben"), &t).await;
    assert_eq!(ben["context"]["available"], false, "{ben}");
    assert_eq!(ben["context"]["customer"]["name"], "John Doe");
    assert_eq!(ben["parameters"], json!({}), "{ben}");
    let cleo = task(&app, &token("cleo"), &t).await;
    assert_eq!(cleo["context"]["source"], "live", "{cleo}");
    assert_eq!(cleo["parameters"]["TicketId"], "#3151", "{cleo}");
    assert_eq!(cleo["parameters"]["Gender"], "Male", "{cleo}");
    // The call ends in C.
    ok(
        &app,
        &token("cleo"),
        &format!("{path}/handled"),
        Value::Null,
    )
    .await;
    save(&app, "cleo", &sc).await;
    let v = task(&app, ADMIN, &t).await;
    assert_eq!(v["state"], "concluded", "{v}");
    // Once it has ended too, the earlier parts see only their own.
    let anna = task(&app, &token("anna"), &t).await;
    assert_eq!(anna["parameters"], json!({}), "{anna}");
    assert_eq!(anna["context"]["reason"], "ended", "{anna}");
    // Where her part was and whom it was with, not where the task ended
    // nor the name learnt in C.
    assert_eq!(anna["service"], "a", "{anna}");
    assert_eq!(anna["system_parameters"]["service"], "a", "{anna}");
    assert_eq!(anna["customer"]["name"], "John Doe", "{anna}");
    let ben = task(&app, &token("ben"), &t).await;
    assert_ne!(ben["customer"]["name"], "Jane Roe", "{ben}");
    let record = |agent: &str| session_of(&v, agent)["context"].clone();
    let a = record("anna");
    assert_eq!(a["available"], true, "{a}");
    assert_eq!(a["customer"]["name"], "John Doe");
    assert_eq!(
        a["parameters"]["custom"],
        json!({"SpokenLanguage": "German", "TicketId": "#1111"})
    );
    let b = record("ben");
    assert_eq!(b["available"], false, "{b}");
    assert_eq!(b["customer"]["name"], "John Doe");
    assert_eq!(b["parameters"], Value::Null);
    assert!(
        b["not_available"]
            .as_array()
            .unwrap()
            .contains(&json!("parameters"))
    );
    let c = record("cleo");
    assert_eq!(c["available"], true, "{c}");
    assert_eq!(c["customer"]["name"], "Jane Roe", "set while C had it");
    assert_eq!(
        c["parameters"]["custom"],
        json!({"SpokenLanguage": "German", "Gender": "Male", "TicketId": "#3151"})
    );
    // Each agent sees their own record.
    for (agent, expected) in [
        ("anna", json!("#1111")),
        ("ben", Value::Null),
        ("cleo", json!("#3151")),
    ] {
        let mine = task(&app, &token(agent), &t).await;
        assert_eq!(mine["sessions"].as_array().unwrap().len(), 1);
        assert_eq!(
            mine["sessions"][0]["context"]["parameters"]["custom"]["TicketId"], expected,
            "{agent}"
        );
    }
    app.stop().await;
}

/// Posts transcript lines to `path` and checks what the post did: `[added, repeated]`.
async fn post_lines(app: &TestApp, who: &str, path: &str, body: Value, did: [u64; 2]) {
    let (s, b) = app.post(who, path, body).await;
    assert_eq!(
        (s, &b),
        (
            StatusCode::OK,
            &json!({"added": did[0], "repeated": did[1]})
        )
    );
}

/// Telephony posts what was said in a call: each line once by its id, in
/// the order spoken, for the holder (live, by SSE, and on the page) and in
/// the task's messages summary; other words under a used id, bad lines,
/// other modalities and other callers are refused, storing nothing.
async fn a_call_carries_its_transcript(db: Db) {
    let app = start(db, |u| {
        config(
            u,
            "",
            &[&format!("id = \"support\"\nname = \"Support\"\n{PICKUP}")],
            &[("alice", "support"), ("bob", "support")],
        )
    })
    .await;
    let (s, b) = app
        .post(
            CRM,
            "/api/v1/tasks",
            json!({"service": "support", "modality": "call", "external_id": "call-77",
                   "customer": {"name": "Ada Caller", "phone": "+41 44 000 00 77"},
                   "outcome": {"agent": "alice", "result": "accepted"}}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    let t = b["id"].as_str().unwrap().to_string();
    let session = session_of(&b, "alice")["id"].as_str().unwrap().to_string();
    let path = format!("/api/v1/tasks/{t}/transcript");
    let mut stream = support::sse::EventStream::open(&app.url, &token("alice")).await;
    // Two lines, the second spoken first; a hostile one among them.
    let lines = json!({"lines": [
        {"id": "u2", "speaker": "agent", "name": "Alice", "text": "Let me look: <script>alert(1)</script>", "at": "2026-12-06T10:00:07Z"},
        {"id": "u1", "speaker": "customer", "text": "Hello, my parcel\nis late.", "at": "2026-12-06T10:00:03Z"},
    ]});
    post_lines(&app, CRM, &path, lines.clone(), [2, 0]).await;
    let e = stream
        .expect_kind("transcript", support::sse::PROMPT, "the holder is told")
        .await;
    assert_eq!(
        (&e.data["task_id"], &e.data["added"]),
        (&json!(t), &json!(2)),
        "{:?}",
        e.data
    );
    let (s, m) = app
        .get(&token("alice"), &format!("/api/v1/tasks/{t}/messages"))
        .await;
    assert_eq!(s, StatusCode::OK, "{m}");
    let seen: Vec<(&str, &str)> = m["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| (l["from"].as_str().unwrap(), l["text"].as_str().unwrap()))
        .collect();
    assert_eq!(
        seen,
        vec![
            ("customer", "Hello, my parcel\nis late."),
            ("agent", "Let me look: <script>alert(1)</script>")
        ],
        "in the order spoken"
    );
    assert_eq!(m["items"][1]["sender_name"], "Alice");
    assert_eq!(m["items"][0]["sent_at"], "2026-12-06T10:00:03.000Z");
    // A retried post changes nothing.
    post_lines(&app, CRM, &path, lines.clone(), [0, 2]).await;
    // Other words under a used id: refused, and the new line beside it is not stored.
    let (s, b) = app
        .post(
            CRM,
            &path,
            json!({"lines": [{"id": "u3", "speaker": "customer", "text": "Thanks"},
                             {"id": "u1", "speaker": "customer", "text": "Something else"}]}),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{b}");
    assert_eq!(b["error"]["code"], "line_id_reused", "{b}");
    assert!(
        b["error"]["message"].as_str().unwrap().contains("'u1'"),
        "{b}"
    );
    // Bad lines are named with their limit; nothing is stored.
    for (body, field) in [
        (json!({"lines": []}), "lines must hold at least one line"),
        (
            json!({"lines": [{"id": "u4", "speaker": "caller", "text": "x"}]}),
            "lines[0].speaker",
        ),
        (
            json!({"lines": [{"id": "u4", "speaker": "bot", "text": "x".repeat(16385)}]}),
            "lines[0].text is longer than 16384",
        ),
        (
            json!({"lines": [{"id": "u4", "speaker": "bot", "text": "a"}, {"id": "u4", "speaker": "bot", "text": "b"}]}),
            "lines[1].id repeats",
        ),
    ] {
        let (s, b) = app.post(CRM, &path, body).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{b}");
        assert!(
            b["error"]["message"].as_str().unwrap().contains(field),
            "{field}: {b}"
        );
    }
    // Only admins and integrations with tasks:write post; only to calls.
    for who in [READER.to_string(), token("alice")] {
        let (s, b) = app.post(&who, &path, lines.clone()).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{b}");
    }
    let survey = json!({"lines": [{"id": "u5", "speaker": "bot", "text": "Survey score: 5"}]});
    post_lines(&app, ADMIN, &path, survey, [1, 0]).await;
    let (s, b) = app
        .post(
            ADMIN,
            "/api/v1/tasks",
            json!({"service": "support", "modality": "email", "subject": "Mail"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    let (s, b) = app
        .post(
            CRM,
            &format!("/api/v1/tasks/{}/transcript", b["id"].as_str().unwrap()),
            lines.clone(),
        )
        .await;
    assert_eq!(
        (s, &b["error"]["code"]),
        (StatusCode::CONFLICT, &json!("not_a_call")),
        "{b}"
    );
    let (s, b) = app
        .post(
            CRM,
            "/api/v1/tasks/tsk_doesnotexist0000000000/transcript",
            lines.clone(),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{b}");
    // The summary counts the lines: the customer's in, the others out.
    let details = task(&app, &token("alice"), &t).await;
    assert_eq!(
        details["messages"],
        json!({"count": 3, "inbound": 1, "outbound": 2,
               "first_at": "2026-12-06T10:00:03.000Z", "last_at": details["messages"]["last_at"],
               "last_direction": "outbound", "url": format!("/api/v1/tasks/{t}/messages")}),
    );
    // Every answer with the task's details carries it, PATCH's too.
    let (s, v) = patch(
        &app,
        CRM,
        &format!("/api/v1/tasks/{t}"),
        json!({"parameters": {"Rating": 5}}),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["messages"]["count"], 3, "{v}");
    // A colleague not on the task does not read it.
    let (s, _) = app
        .get(&token("bob"), &format!("/api/v1/tasks/{t}/messages"))
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    // The holder's page shows it, escaped.
    let html = app
        .page(&token("alice"), &format!("/ui/sessions/{session}"))
        .await;
    assert!(html.contains("Call transcript"), "{html}");
    assert!(html.contains("Hello, my parcel"), "{html}");
    assert!(html.contains("Survey score: 5"), "{html}");
    assert!(html.contains("&lt;script&gt;alert(1)"), "{html}");
    assert!(!html.contains("<script>alert"), "{html}");
    // The transcript may come after the call: the task is over, the lines still join.
    ok(
        &app,
        CRM,
        &format!("/api/v1/tasks/{t}/outcome"),
        json!({"agent": "alice", "result": "accepted", "ended": true}),
    )
    .await;
    let bye = json!({"lines": [{"id": "u6", "speaker": "customer", "text": "Bye"}]});
    post_lines(&app, CRM, &path, bye, [1, 0]).await;
    assert_eq!(task(&app, ADMIN, &t).await["messages"]["count"], 4);
    // A line posted without a time, retried with a new one: the first is
    // the same line (not other words), the new one is added.
    let untimed = json!({"id": "u7", "speaker": "agent", "text": "Anything else?"});
    post_lines(
        &app,
        CRM,
        &path,
        json!({"lines": [untimed.clone()]}),
        [1, 0],
    )
    .await;
    let retried =
        json!({"lines": [untimed, {"id": "u8", "speaker": "customer", "text": "No, thanks."}]});
    post_lines(&app, CRM, &path, retried, [1, 1]).await;
    app.stop().await;
}

/// A supervisor reads the work of their own services, every session of it,
/// and nothing of other services; they change nothing.
async fn supervisors_read_the_work_of_their_services(db: Db) {
    let sue = token("sue");
    let app = start(db, |u| {
        config(
            u,
            &format!(
                "[[agents]]\nid = \"sue\"\nname = \"Sue\"\nemail = \"sue@example.com\"\ntoken = \"{sue}\"\nservices = [\"support\"]\nsupervisor = true\n"
            ),
            &[
                &format!("id = \"support\"\nname = \"Support\"\n{PICKUP}"),
                &format!("id = \"sales\"\nname = \"Sales\"\n{PICKUP}"),
            ],
            &[("alice", "support"), ("bob", "sales")],
        )
    })
    .await;
    let answered = |service: &str, agent: &str, id: &str| {
        json!({"service": service, "modality": "call", "external_id": id,
               "outcome": {"agent": agent, "result": "accepted"}})
    };
    let support = ok(
        &app,
        CRM,
        "/api/v1/tasks",
        answered("support", "alice", "c-1"),
    )
    .await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let sales = ok(&app, CRM, "/api/v1/tasks", answered("sales", "bob", "c-2")).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    // The list: their services' tasks only.
    let (s, list) = app.get(&sue, "/api/v1/tasks").await;
    assert_eq!(s, StatusCode::OK, "{list}");
    let ids: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t["id"].as_str())
        .collect();
    assert_eq!(ids, vec![support.as_str()], "{list}");
    let (s, b) = app.get(&sue, "/api/v1/tasks?service=sales").await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{b}");
    assert!(
        b["error"]["message"].as_str().unwrap().contains("'sales'"),
        "{b}"
    );
    let (s, b) = app.get(&token("alice"), "/api/v1/tasks").await;
    assert_eq!(s, StatusCode::FORBIDDEN, "an agent is no supervisor: {b}");
    // A task of theirs with every session and its live details; none of another service.
    let t = task(&app, &sue, &support).await;
    assert_eq!(session_of(&t, "alice")["state"], "connected", "{t}");
    assert_eq!(t["context"]["source"], "live", "{t}");
    let (s, _) = app
        .get(&sue, &format!("/api/v1/tasks/{support}/messages"))
        .await;
    assert_eq!(s, StatusCode::OK);
    for path in [
        format!("/api/v1/tasks/{sales}"),
        format!("/api/v1/tasks/{sales}/messages"),
    ] {
        let (s, b) = app.get(&sue, &path).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{path}: {b}");
    }
    // Their services' queues and agents.
    let (s, q) = app.get(&sue, "/api/v1/ops/queues").await;
    assert_eq!(s, StatusCode::OK, "{q}");
    let queues = q["items"].as_array().unwrap();
    assert!(
        !queues.is_empty() && queues.iter().all(|q| q["service"] == "support"),
        "{q}"
    );
    let (s, a) = app.get(&sue, "/api/v1/agents").await;
    assert_eq!(s, StatusCode::OK, "{a}");
    let mut agents: Vec<&str> = a["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a["id"].as_str())
        .collect();
    agents.sort_unstable();
    assert_eq!(agents, vec!["alice", "sue"], "{a}");
    for path in ["/api/v1/ops/queues", "/api/v1/agents"] {
        let (s, b) = app.get(&token("alice"), path).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{path}: {b}");
    }
    // Read-only: no posting, updating, handling or transferring.
    let (s, b) = app
        .post(&sue, "/api/v1/tasks", answered("support", "alice", "c-3"))
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{b}");
    let (s, b) = patch(
        &app,
        &sue,
        &format!("/api/v1/tasks/{support}"),
        json!({"parameters": {"A": "1"}}),
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{b}");
    for action in ["handled", "transfer"] {
        let (s, b) = app
            .post(
                &sue,
                &format!("/api/v1/tasks/{support}/{action}"),
                json!({"service": "sales"}),
            )
            .await;
        // She sees the task: told she may not act, not that it is not there.
        assert_eq!(s, StatusCode::FORBIDDEN, "{action}: {b}");
        assert!(
            b["error"]["message"]
                .as_str()
                .unwrap_or_default()
                .contains("you do not hold"),
            "{action}: {b}"
        );
    }
    assert_eq!(
        session_of(&task(&app, ADMIN, &support).await, "alice")["state"],
        "connected"
    );
    // The task goes on to Sales: Sue still sees Alice's part of it (her
    // service's), not what Sales did with it.
    let (s, b) = app
        .post(
            &token("alice"),
            &format!("/api/v1/tasks/{support}/transfer"),
            json!({"service": "sales"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    ok(
        &app,
        CRM,
        &format!("/api/v1/tasks/{support}/outcome"),
        json!({"agent": "bob", "result": "accepted"}),
    )
    .await;
    let t = task(&app, &sue, &support).await;
    let agents: Vec<&str> = t["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["agent_id"].as_str())
        .collect();
    assert_eq!(agents, vec!["alice"], "{t}");
    assert_ne!(
        t["context"]["source"], "live",
        "not the task's live details: {t}"
    );
    let (s, b) = app.get(ADMIN, "/api/v1/admin/agents/sue").await;
    assert_eq!((s, &b["supervisor"]), (StatusCode::OK, &json!(true)), "{b}");
    app.stop().await;
}

on_both_backends!(
    a_part_over_in_the_same_service_keeps_what_it_knew,
    callers_are_found_by_phone_upn_or_address,
    update_task_live_and_concluded,
    context_links_fill_every_placeholder_and_keep_hostile_values_in_place,
    context_not_kept_is_not_available_right_after_conclusion,
    kept_context_is_there_then_gone_after_its_days,
    transfer_accumulates_context_per_service,
    a_call_carries_its_transcript,
    supervisors_read_the_work_of_their_services,
);
