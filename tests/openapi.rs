//! The OpenAPI document served at `/api/v1/openapi.json` describes the router
//! as it is: every route documented, every documented operation answered.
mod support;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use support::app::{ADMIN, Db, TestApp};

/// The handlers the router serves, read from its source
/// (`src/http/mod.rs`): `routes()` registers each with `.routes(routes!(..))`,
/// which takes the handler's method and path from its `#[utoipa::path]`
/// (a handler without one does not compile) and adds it to the router and to
/// the document at once. Any other way of adding a route would escape the
/// document: this refuses it, so a route added without documentation fails
/// this test.
fn routed_handlers() -> Vec<String> {
    let src = include_str!("../src/http/mod.rs");
    let start = src
        .find("pub(crate) fn routes()")
        .expect("the routes function");
    let body = &src[start..];
    let routes_fn = &body[..body.find("\n}\n").expect("the routes function ends")];
    let router_start = src.find("pub fn router(").expect("the router function");
    let router_body = &src[router_start..];
    let router_fn = &router_body[..router_body.find("\n}\n").expect("the router function ends")];
    for other in [
        ".route(",
        "route_service(",
        "nest_service(",
        ".merge(",
        "fallback_service(",
    ] {
        assert!(
            !routes_fn.contains(other) && !router_fn.contains(other),
            "the router uses `{other}`: add routes with `.routes(routes!(handler))` and `#[utoipa::path]` on the handler"
        );
    }
    assert_eq!(
        routes_fn.matches(".nest(").count(),
        1,
        "one nested router (/api/v1)"
    );
    assert!(
        !router_fn.contains(".nest("),
        "`router()` adds no routes of its own"
    );
    let mut handlers = Vec::new();
    let mut rest = routes_fn;
    while let Some(at) = rest.find("routes!(") {
        let args = &rest[at + "routes!(".len()..];
        let end = args.find(')').expect("routes!(...) is closed");
        handlers.extend(
            args[..end]
                .split(',')
                .map(str::trim)
                .filter(|h| !h.is_empty())
                .map(String::from),
        );
        rest = &args[end..];
    }
    handlers
}

/// Routes that need no token: documented with `security: []`.
const PUBLIC: &[&str] = &[
    "/",
    "/ops",
    "/sign-in",
    "/sign-out",
    "/static/{file}",
    "/healthz",
    "/readyz",
    "/metrics",
    "/api/v1/openapi.json",
    "/api/v1/chat/events",
];

const METHODS: &[&str] = &[
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// The documented operations: (method, path, operation object, path item).
fn operations(doc: &Value) -> Vec<(String, String, &Value, &Value)> {
    let paths = doc["paths"].as_object().expect("paths is an object");
    let mut ops = Vec::new();
    for (path, item) in paths {
        let item_obj = item.as_object().expect("a path item is an object");
        for (key, op) in item_obj {
            if METHODS.contains(&key.as_str()) {
                ops.push((key.clone(), path.clone(), op, item));
            }
        }
    }
    ops
}

/// Every `$ref` in `v`, with where it was found.
fn refs(v: &Value, at: &str, out: &mut Vec<(String, String)>) {
    match v {
        Value::Object(map) => {
            for (k, child) in map {
                if k == "$ref" {
                    out.push((at.to_string(), child.as_str().unwrap_or("").to_string()));
                } else {
                    refs(child, &format!("{at}/{k}"), out);
                }
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                refs(child, &format!("{at}/{i}"), out);
            }
        }
        _ => {}
    }
}

/// Path parameters declared on the operation or its path item.
fn path_params(op: &Value, item: &Value) -> BTreeSet<String> {
    [&item["parameters"], &op["parameters"]]
        .into_iter()
        .filter_map(Value::as_array)
        .flatten()
        .filter(|p| p["in"] == "path")
        .inspect(|p| assert_eq!(p["required"], true, "path parameter {p} is required"))
        .filter_map(|p| p["name"].as_str().map(String::from))
        .collect()
}

/// The `{names}` in a path template.
fn template_params(path: &str) -> BTreeSet<String> {
    path.split('/')
        .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
        .map(String::from)
        .collect()
}

/// The path with every `{parameter}` replaced by `x`.
fn concrete(path: &str) -> String {
    path.split('/')
        .map(|seg| {
            if seg.starts_with('{') && seg.ends_with('}') {
                "x"
            } else {
                seg
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

async fn fetch_document(app: &TestApp) -> Value {
    let resp = app
        .client
        .get(format!("{}/api/v1/openapi.json", app.url))
        .send()
        .await
        .expect("the document is served");
    assert_eq!(resp.status(), StatusCode::OK);
    let content_type = resp.headers()[reqwest::header::CONTENT_TYPE]
        .to_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        content_type.starts_with("application/json"),
        "{content_type}"
    );
    let text = resp.text().await.expect("a body");
    serde_json::from_str(&text).expect("the OpenAPI document is JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_describes_the_router() {
    let app = TestApp::spawn(Db::Sqlite).await;
    let doc = fetch_document(&app).await;

    let version = doc["openapi"].as_str().unwrap_or_default();
    assert!(version.starts_with("3.1."), "openapi is {version:?}");
    assert!(doc["info"]["title"].is_string() && doc["info"]["version"].is_string());
    let bearer = &doc["components"]["securitySchemes"]["bearerAuth"];
    assert_eq!(
        (&bearer["type"], &bearer["scheme"]),
        (&json!("http"), &json!("bearer"))
    );
    assert_eq!(doc["security"], json!([{"bearerAuth": []}]));
    // Descriptions come from doc comments: none may carry a link into the
    // Rust code (`[`Name`]`), which means nothing to the API's users.
    let text = doc.to_string();
    let leftovers: Vec<String> = text
        .match_indices("[`")
        .map(|(at, _)| text[at..].chars().take(60).collect())
        .collect();
    assert!(
        leftovers.is_empty(),
        "Rust doc links in the document: {leftovers:?}"
    );
    // A body that may be left out is not said to be required.
    let rotate = &doc["paths"]["/api/v1/admin/chat-handle-keys/rotate"]["post"]["requestBody"];
    assert!(rotate.is_object(), "{rotate}");
    assert_ne!(rotate["required"], json!(true), "{rotate}");

    // Every route of the router is documented (each handler is one
    // operation), and nothing else is (the probe below calls each).
    let ops = operations(&doc);
    let handlers = routed_handlers();
    assert!(handlers.len() > 80, "the router was read: {handlers:?}");
    let unique: BTreeSet<&String> = handlers.iter().collect();
    assert_eq!(unique.len(), handlers.len(), "a handler is routed twice");
    assert_eq!(
        ops.len(),
        handlers.len(),
        "one documented operation per routed handler"
    );

    // Each operation is well formed.
    let mut operation_ids = BTreeSet::new();
    for (method, path, op, item) in &ops {
        let id = op["operationId"].as_str().unwrap_or_default();
        assert!(!id.is_empty(), "{method} {path} has no operationId");
        assert!(operation_ids.insert(id), "operationId {id} is used twice");
        assert!(
            op["description"].as_str().is_some_and(|d| !d.is_empty()),
            "{method} {path} has no description"
        );
        let responses = op["responses"].as_object().expect("responses");
        assert!(
            // A redirect is the success of a link that is followed.
            responses
                .keys()
                .any(|k| k.starts_with('2') || k.starts_with('3')),
            "{method} {path} documents no success"
        );
        assert_eq!(
            path_params(op, item),
            template_params(path),
            "{method} {path}: path parameters"
        );
        if path.starts_with("/ui/") {
            // Page fragments: the browser session cookie, not a bearer token.
            assert_eq!(
                op["security"],
                json!([{"cookieAuth": []}]),
                "{method} {path}"
            );
            assert!(
                responses.contains_key("401"),
                "{method} {path} documents 401"
            );
        } else if PUBLIC.contains(&path.as_str()) {
            assert_eq!(op["security"], json!([]), "{method} {path} needs no token");
        } else {
            assert!(
                op.get("security").is_none(),
                "{method} {path} uses the global bearerAuth"
            );
            assert!(
                responses.contains_key("401"),
                "{method} {path} documents 401"
            );
        }
    }

    // Every `$ref` resolves inside the document.
    let mut found = Vec::new();
    refs(&doc, "#", &mut found);
    assert!(!found.is_empty());
    for (at, target) in &found {
        let pointer = target
            .strip_prefix('#')
            .unwrap_or_else(|| panic!("{at}: $ref {target:?} is not local"));
        assert!(
            doc.pointer(pointer).is_some(),
            "{at}: $ref {target:?} does not resolve"
        );
    }

    // The schemas the API is built of are there.
    for name in [
        "Session",
        "Task",
        "Customer",
        "WrapUp",
        "Service",
        "Agent",
        "Contact",
        "Error",
        "SessionPage",
        "TaskPage",
        "Mailbox",
        "QuarantineEntry",
        "Message",
        "Draft",
        "DraftAttachment",
        "Address",
    ] {
        assert!(
            doc["components"]["schemas"][name].is_object(),
            "schema {name} is missing"
        );
    }

    // A path the router does not know answers "no such endpoint": the probe
    // below can tell that apart from a record that is not found.
    let (status, body) = app.get(ADMIN, "/api/v1/definitely-not-a-route").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"]["message"], "no such endpoint");

    // Every documented operation is answered by the router, with a status it documents.
    for (method, path, op, _) in &ops {
        let url = format!("{}{}", app.url, concrete(path));
        let m = Method::from_bytes(method.to_uppercase().as_bytes()).expect("a method");
        let mut request = app.client.request(m, &url).bearer_auth(ADMIN);
        if op.get("requestBody").is_some() {
            request = request.json(&json!({}));
        }
        let resp = request.send().await.expect("request reaches the server");
        let status = resp.status();
        // An event stream never ends: its status and type are the answer.
        let streaming = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
        let text = if streaming {
            String::new()
        } else {
            resp.text().await.unwrap_or_default()
        };
        let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        assert_ne!(
            status,
            StatusCode::METHOD_NOT_ALLOWED,
            "{method} {path}: the router does not accept the method"
        );
        if status == StatusCode::NOT_FOUND {
            assert_ne!(
                body["error"]["message"], "no such endpoint",
                "{method} {path}: the router has no such route"
            );
        }
        assert!(
            op["responses"][status.as_str()].is_object(),
            "{method} {path} answered {status}, which it does not document: {text}"
        );
    }

    // A newcomer gets the same document without a server.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .arg("openapi")
        .output()
        .expect("switchboard openapi runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed: Value = serde_json::from_slice(&out.stdout).expect("it prints JSON");
    assert_eq!(
        printed, doc,
        "`switchboard openapi` prints the served document"
    );

    app.stop().await;
}
