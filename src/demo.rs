//! `switchboard demo`: everything needed to try Switchboard with no server
//! installed: SQLite under `./data/`, demo services, agents and contacts, and
//! sessions in every state.
use crate::app::Running;
use crate::config::{AgentConfig, Capacity as CapacityConfig, Config, Secret, ServiceConfig};
use crate::domain::token::generate_token;
use crate::domain::wrapup::{CatalogCode, CodeKind, WrapUp, WrapUpCodes};
use crate::domain::{Modality, SessionResult, now_millis};
use crate::store::{Contact, NewTask, Outcome, Store, TaskFilter};
use std::path::Path;

/// The demo's configuration: fresh tokens on every start.
pub fn demo_config(data_dir: &Path, bind: &str) -> Config {
    let code = |c: &str, l: &str, kind| CatalogCode {
        code: c.into(),
        label: l.into(),
        kind,
        active: true,
    };
    let service = |id: &str, name: &str, codes: Vec<CatalogCode>| ServiceConfig {
        id: id.into(),
        name: name.into(),
        email_address: Some(format!("{id}@example.com")),
        email_addresses: vec![],
        priority: 0,
        rona_timeout_secs: Default::default(),
        distribution: Default::default(),
        broadcast_size: crate::domain::service::DEFAULT_BROADCAST_SIZE,
        rona_reset_secs: crate::domain::service::DEFAULT_RONA_RESET_SECS,
        max_ronas: None,
        overflow_service: None,
        capacity: CapacityConfig::default(),
        codes_enabled: true,
        codes,
        context_links: vec![],
        keep_context_days: 0,
        auto_reply_policy: "attach".into(),
        conclude_on_send: false,
    };
    let agent = |id: &str, name: &str, services: &[&str], admin: bool| AgentConfig {
        id: id.into(),
        name: name.into(),
        email: format!("{id}@switchboard.example"),
        token: None,
        token_env: None,
        token_file: None,
        services: services.iter().map(|s| s.to_string()).collect(),
        admin,
        capacity: CapacityConfig::default(),
        resolved_token: Some(Secret::new(generate_token())),
    };
    let text = format!(
        "[database]\nurl = \"sqlite://{}\"\n[http]\nbind = \"{bind}\"\n[ingest]\nmaildir_scan_ms = 500\n\
         [smtp]\nfile = \"{}\"\n\
         [[mailboxes]]\nid = \"support-inbox\"\nservice = \"support\"\nkind = \"maildir\"\npath = \"{}\"\n",
        data_dir.join("demo.db").display(),
        data_dir.join("outbox").display(),
        data_dir.join("maildir").display()
    );
    let mut config: Config = toml::from_str(&text)
        .unwrap_or_else(|_| toml::from_str("").expect("an empty configuration is valid"));
    config.services = vec![
        service(
            "support",
            "Support",
            vec![
                code("billing", "Billing question", CodeKind::Primary),
                code("technical", "Technical problem", CodeKind::Primary),
                code("refund", "Refund granted", CodeKind::Secondary),
                code("vip", "VIP customer", CodeKind::Any),
            ],
        ),
        service(
            "sales",
            "Sales",
            vec![
                code("quote", "Quote sent", CodeKind::Primary),
                code("followup", "Follow-up needed", CodeKind::Secondary),
            ],
        ),
    ];
    config.agents = vec![
        agent("alice", "Alice Example", &["support", "sales"], false),
        agent("bob", "Bob Example", &["support"], false),
        agent("admin", "Demo Admin", &[], true),
    ];
    config
}

/// Fills an empty demo database with contacts and sessions in every state.
pub async fn seed(store: &Store) -> anyhow::Result<()> {
    let existing = store
        .list_tasks(&TaskFilter {
            limit: 1,
            ..Default::default()
        })
        .await?;
    if !existing.is_empty() {
        return Ok(());
    }
    for (id, name, email, phone) in [
        (
            "c-ada",
            "Ada Lovelace",
            Some("ada@analytical.example"),
            None,
        ),
        (
            "c-grace",
            "Grace Hopper",
            Some("grace@navy.example"),
            Some("+1 555 0100"),
        ),
        ("c-linus", "Linus Pauling", None, Some("+1 555 0199")),
    ] {
        store
            .upsert_contact(&Contact {
                id: id.into(),
                name: name.into(),
                email: email.map(String::from),
                phone: phone.map(String::from),
                company: None,
                postal_address: None,
            })
            .await?;
    }
    let alice = store.agent("alice").await?;
    let bob = store.agent("bob").await?;
    let hour = 3_600_000;
    let now = now_millis();
    let task = |service: &str, modality, subject: &str, address: &str, ago: i64| NewTask {
        service_id: service.into(),
        modality,
        priority: 0,
        routed: true,
        arrived_at: now - ago,
        customer_address: Some(address.into()),
        customer_name: None,
        subject: Some(subject.into()),
        params: serde_json::json!({}),
        external_id: None,
    };
    // Concluded: picked up, handled, wrapped up and saved.
    for (subject, address, modality, tags) in [
        (
            "Invoice 1042 is wrong",
            "ada@analytical.example",
            Modality::Email,
            vec!["invoice"],
        ),
        (
            "Cannot log in",
            "+1 555 0100",
            Modality::Call,
            vec!["login", "password"],
        ),
        (
            "Where is my parcel?",
            "visitor-77@chat.example",
            Modality::Im,
            vec!["shipping"],
        ),
    ] {
        let (t, _) = store
            .create_task(&task("support", modality, subject, address, 5 * hour))
            .await?;
        let s = store.pickup(&t.id, &alice).await?;
        store.mark_handled(&t.id, &alice).await?;
        let wrapup = WrapUp {
            codes: WrapUpCodes {
                primary: vec!["billing".into()],
                secondary: vec![],
            },
            tags: tags.into_iter().map(String::from).collect(),
        };
        store.set_wrapup(&s.id, &wrapup).await?;
        store.save_session(&s.id).await?;
    }
    // A declined call and a RONA: concluded at once.
    let (call, _) = store
        .create_task(&task(
            "support",
            Modality::Call,
            "Inbound call",
            "+1 555 0199",
            3 * hour,
        ))
        .await?;
    for (agent, result) in [
        ("bob", SessionResult::Declined),
        ("alice", SessionResult::Rona),
    ] {
        store
            .record_outcome(
                &call.id,
                &Outcome {
                    agent_id: agent.into(),
                    result,
                    ended: false,
                },
            )
            .await?;
    }
    // Live: one connected email, one IM in wrap-up.
    let (t, _) = store
        .create_task(&task(
            "support",
            Modality::Email,
            "Refund for order 77",
            "grace@navy.example",
            hour,
        ))
        .await?;
    store.pickup(&t.id, &alice).await?;
    let (t, _) = store
        .create_task(&task(
            "sales",
            Modality::Im,
            "Volume pricing?",
            "buyer@corp.example",
            hour / 2,
        ))
        .await?;
    store.pickup(&t.id, &alice).await?;
    store.mark_handled(&t.id, &alice).await?;
    // Bob has one live call; two tasks wait in the queue for pickup.
    let (t, _) = store
        .create_task(&task(
            "support",
            Modality::Call,
            "Inbound call",
            "+44 20 7946 0000",
            hour / 4,
        ))
        .await?;
    store.pickup(&t.id, &bob).await?;
    for (subject, address) in [
        (
            "Password reset does not arrive",
            "new.customer@mail.example",
        ),
        ("Question about my contract", "ada@analytical.example"),
    ] {
        store
            .create_task(&task(
                "support",
                Modality::Email,
                subject,
                address,
                10 * 60_000,
            ))
            .await?;
    }
    Ok(())
}

/// Sample mail the demo delivers into its Maildir: plain, HTML, an attachment,
/// a reply that threads onto the first, and an auto-reply.
pub const SAMPLE_MAIL: [(&str, &[u8]); 5] = [
    ("01-plain", include_bytes!("../demo/mail/01-plain.eml")),
    ("02-html", include_bytes!("../demo/mail/02-html.eml")),
    (
        "03-attachment",
        include_bytes!("../demo/mail/03-attachment.eml"),
    ),
    ("04-reply", include_bytes!("../demo/mail/04-reply.eml")),
    (
        "05-auto-reply",
        include_bytes!("../demo/mail/05-auto-reply.eml"),
    ),
];

/// Delivers the sample mail into `maildir/new/` as an MTA would (written in
/// `tmp/`, then renamed), so it flows through the real ingestion path.
pub fn deliver_samples(root: &Path) -> std::io::Result<usize> {
    crate::ingest::maildir::ensure_layout(root)?;
    let stamp = chrono::Utc::now().timestamp();
    for (i, (name, raw)) in SAMPLE_MAIL.iter().enumerate() {
        let file = format!("{stamp}.{i:02}_{name}.demo");
        let tmp = root.join("tmp").join(&file);
        std::fs::write(&tmp, raw)?;
        std::fs::rename(&tmp, root.join("new").join(&file))?;
    }
    Ok(SAMPLE_MAIL.len())
}

/// Runs the demo until Ctrl-C.
pub async fn run(data_dir: &Path, bind: &str) -> anyhow::Result<()> {
    std::fs::create_dir_all(data_dir)?;
    let maildir = data_dir.join("maildir");
    let first_run = !maildir.join("new").exists();
    crate::ingest::maildir::ensure_layout(&maildir)?;
    let config = demo_config(data_dir, bind);
    let running = Running::start(&config).await?;
    seed(&running.store).await?;
    // After the directory is seeded, so senders resolve to their contacts.
    let delivered = if first_run {
        deliver_samples(&maildir)?
    } else {
        0
    };
    let url = running.url();
    println!("\nSwitchboard demo is running at {url}/");
    println!("Database: {}", data_dir.join("demo.db").display());
    println!(
        "Mailbox:  {} (Maildir; {delivered} sample mail(s) delivered now; drop more .eml files into its new/ folder)",
        data_dir.join("maildir").display()
    );
    println!(
        "Outbox:   {} (replies are written here as .eml files instead of being sent)",
        data_dir.join("outbox").display()
    );
    println!("\nAgents and their tokens (new on every start):");
    for a in &config.agents {
        let token = a
            .resolved_token
            .as_ref()
            .map(|t| t.expose())
            .unwrap_or_default();
        let role = if a.admin { "admin" } else { "agent" };
        println!("  {:<6} {:<5} {token}", a.id, role);
    }
    if let Some(alice) = config
        .agents
        .first()
        .and_then(|a| a.resolved_token.as_ref())
    {
        println!(
            "\nTry:\n  curl -H 'Authorization: Bearer {}' {url}/api/v1/me/sessions",
            alice.expose()
        );
    }
    println!("\nOpen {url}/ in a browser and paste a token. Ctrl-C stops.\n");
    running.run_until_signal().await
}
