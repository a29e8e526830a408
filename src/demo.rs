//! `switchboard demo`: everything needed to try Switchboard with no server
//! installed: SQLite under `./data/`, demo services, agents and contacts, and
//! sessions in every state. Every email task of the demo comes from a real
//! mail, so each can be worked through to the end in the page.
pub mod web_chat;

use crate::app::Running;
use crate::config::{AgentConfig, Capacity as CapacityConfig, Config, Secret, ServiceConfig};
use crate::domain::token::generate_token;
use crate::domain::wrapup::{CatalogCode, CodeKind, WrapUp, WrapUpCodes};
use crate::domain::{Modality, SessionResult, now_millis};
use crate::ingest::prepare::{MailLimits, Origin, prepare};
use crate::store::{Contact, IngestBatch, NewTask, Outcome, Store, TaskFilter};
use anyhow::Context;
use std::collections::BTreeMap;
use std::path::Path;
pub use web_chat::WebChat;

/// The demo agents: id, name, services, admin.
const AGENTS: [(&str, &str, &[&str], bool); 3] = [
    ("alice", "Alice Example", &["support", "sales"], false),
    ("bob", "Bob Example", &["support"], false),
    ("admin", "Demo Admin", &[], true),
];

/// The file in the data folder that keeps the demo agents' tokens, so
/// sign-in keeps working across restarts.
pub const TOKENS_FILE: &str = "demo-tokens.toml";
/// The file the running demo holds an OS lock on (one demo per folder).
pub const LOCK_FILE: &str = "demo.lock";
/// The demo's simulated web chat: a webhook chat channel of Support whose
/// signing secret is kept with the tokens.
pub const CHAT_CHANNEL: &str = "web-chat";
/// The file in the data folder where the simulated web chat keeps its chats.
pub const WEB_CHAT_FILE: &str = "web-chat.json";

/// The demo agents' tokens: read from `data_dir/demo-tokens.toml`, or made
/// and written there (readable by the owner only) on the first start.
pub fn demo_tokens(data_dir: &Path) -> anyhow::Result<BTreeMap<String, String>> {
    let path = data_dir.join(TOKENS_FILE);
    let mut tokens: BTreeMap<String, String> = match std::fs::read_to_string(&path) {
        Ok(text) => toml::from_str(&text).with_context(|| {
            format!("{} is damaged: delete it to get new tokens", path.display())
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let mut changed = false;
    for id in AGENTS.iter().map(|a| a.0).chain([CHAT_CHANNEL]) {
        if !tokens.get(id).is_some_and(|t| t.starts_with("sb_")) {
            tokens.insert(id.to_string(), generate_token());
            changed = true;
        }
    }
    if changed {
        let mut text = String::from(
            "# Tokens of the demo agents and the web chat's signing secret (switchboard demo). Delete this file for new ones.\n",
        );
        for (id, token) in &tokens {
            text.push_str(&format!("{id} = \"{token}\"\n"));
        }
        write_private(&path, text.as_bytes())
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(tokens)
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path)?.write_all(bytes)
}

/// Takes the demo folder for this process: an OS lock on `data/demo.lock`,
/// held until the process ends. A second demo on the same folder is refused.
pub fn lock_data_dir(data_dir: &Path) -> anyhow::Result<std::fs::File> {
    let path = data_dir.join(LOCK_FILE);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => anyhow::bail!(
            "a demo is already running on {} (it holds {}): use that one, stop it first (Ctrl-C in its terminal), or give another folder with --data",
            data_dir.display(),
            path.display()
        ),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("cannot lock {}", path.display()))
        }
    }
}

/// The demo's configuration, with the agents' `tokens`.
pub fn demo_config(data_dir: &Path, bind: &str, tokens: &BTreeMap<String, String>) -> Config {
    let code = |c: &str, l: &str, kind| CatalogCode {
        code: c.into(),
        label: l.into(),
        kind,
        active: true,
    };
    let service = |id: &str, name: &str, distribution, codes: Vec<CatalogCode>| ServiceConfig {
        id: id.into(),
        name: name.into(),
        email_address: Some(format!("{id}@example.com")),
        email_addresses: vec![],
        priority: 0,
        rona_timeout_secs: Default::default(),
        distribution,
        broadcast_size: crate::domain::service::DEFAULT_BROADCAST_SIZE,
        rona_reset_secs: crate::domain::service::DEFAULT_RONA_RESET_SECS,
        max_ronas: None,
        overflow_service: None,
        capacity: CapacityConfig::default(),
        codes_enabled: true,
        codes,
        // What "Session details" shows under Conversation context: a CRM
        // search for the customer (example addresses), and a map of where
        // they are when that is known.
        context_links: vec![
            crate::domain::context::ContextLink {
                label: "CRM".into(),
                url_template:
                    "https://crm.example.com/search?email=$(Customer.Email)&phone=$(Customer.Phone)"
                        .into(),
                embed: false,
                kind: Default::default(),
                when_missing: crate::domain::context::WhenMissing::Empty,
            },
            crate::domain::context::ContextLink {
                label: "Where".into(),
                url_template: String::new(),
                embed: false,
                kind: crate::domain::context::LinkKind::Map,
                when_missing: Default::default(),
            },
        ],
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
        supervisor: false,
        capacity: CapacityConfig::default(),
        matrix_user_id: None,
        resolved_token: Some(Secret::new(
            tokens.get(id).cloned().unwrap_or_else(generate_token),
        )),
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
        // Support offers its tasks (Accept / Decline on the page); Sales
        // shows the other way, a queue agents pick up from.
        service(
            "support",
            "Support",
            crate::domain::routing::Distribution::LongestIdle,
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
            crate::domain::routing::Distribution::Pickup,
            vec![
                code("quote", "Quote sent", CodeKind::Primary),
                code("followup", "Follow-up needed", CodeKind::Secondary),
            ],
        ),
    ];
    let secret = tokens
        .get(CHAT_CHANNEL)
        .cloned()
        .unwrap_or_else(generate_token);
    let chat: Result<crate::config::ChatChannelConfig, _> = toml::from_str(&format!(
        "id = \"{CHAT_CHANNEL}\"\nservice = \"support\"\nkind = \"webhook\"\n\
         chat_url_template = \"https://chat.example/{{chat_id}}?agent={{agent_id}}\"\n"
    ));
    if let Ok(mut chat) = chat {
        chat.resolved_secrets = vec![Secret::new(secret)];
        config.chat_channels = vec![chat];
    }
    config.agents = AGENTS
        .iter()
        .map(|(id, name, services, admin)| agent(id, name, services, *admin))
        .collect();
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
    let invoice = seed_mail(store, SEED_MAIL[0]).await?;
    for (task_id, subject, address, modality, tags) in [
        (
            Some(invoice),
            "Invoice 1042 is wrong",
            "ada@analytical.example",
            Modality::Email,
            vec!["invoice"],
        ),
        (
            None,
            "Cannot log in",
            "+1 555 0100",
            Modality::Call,
            vec!["login", "password"],
        ),
        (
            None,
            "Where is my parcel?",
            "visitor-77@chat.example",
            Modality::Im,
            vec!["shipping"],
        ),
    ] {
        let t = match task_id {
            Some(id) => store.task(&id).await?,
            None => {
                store
                    .create_task(&task("support", modality, subject, address, 5 * hour))
                    .await?
                    .0
            }
        };
        let s = store.pickup(&t.id, &alice).await?;
        store.mark_handled(&t.id, &alice).await?;
        let wrapup = WrapUp {
            codes: WrapUpCodes {
                primary: vec!["billing".into()],
                secondary: vec![],
            },
            tags: tags.into_iter().map(String::from).collect(),
        };
        store.set_wrapup(&s.id, &wrapup, None).await?;
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
    // Live: one connected email (from a real mail, so it can be answered), one IM in wrap-up.
    let refund = seed_mail(store, SEED_MAIL[1]).await?;
    store.pickup(&refund, &alice).await?;
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
    for raw in &SEED_MAIL[2..] {
        seed_mail(store, raw).await?;
    }
    Ok(())
}

/// The mails behind the demo's seeded email tasks: an invoice (concluded),
/// a refund (Alice's live task), and two waiting in the queue.
const SEED_MAIL: [&[u8]; 4] = [
    include_bytes!("../demo/seed/10-invoice.eml"),
    include_bytes!("../demo/seed/11-refund.eml"),
    include_bytes!("../demo/seed/12-password.eml"),
    include_bytes!("../demo/seed/13-contract.eml"),
];

/// Takes a seed mail in through the real ingestion path (parse, classify,
/// resolve the customer, commit) into the demo mailbox; returns its task.
async fn seed_mail(store: &Store, raw: &[u8]) -> anyhow::Result<String> {
    let limits = MailLimits {
        max_message_bytes: 10 * 1024 * 1024,
        parse_timeout: std::time::Duration::from_secs(20),
    };
    let item = prepare(
        store,
        &Default::default(),
        raw.to_vec(),
        Origin::default(),
        &limits,
    )
    .await?;
    let report = store
        .commit_batch(&IngestBatch {
            mailbox_id: "support-inbox".into(),
            service_id: "support".into(),
            fence: None,
            cursor: None,
            items: vec![item],
            resolves_quarantine: None,
        })
        .await?;
    report
        .new_tasks
        .first()
        .cloned()
        .context("a demo seed mail did not become a task")
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

/// Starts the simulated chat system (on a port of its own, beside `bind`)
/// and points the demo's chat channel at it: open-chat handles lead to its
/// page, where the agent answers the visitor. Returns it and its
/// `chat_url_template`; [`WebChat::connect`] it once Switchboard listens.
pub async fn start_web_chat(
    data_dir: &Path,
    bind: &str,
    tokens: &BTreeMap<String, String>,
    config: &mut Config,
) -> anyhow::Result<(WebChat, String)> {
    let secret = tokens.get(CHAT_CHANNEL).cloned().unwrap_or_default();
    let agents = AGENTS
        .iter()
        .map(|(id, name, _, _)| (id.to_string(), name.to_string()))
        .collect();
    // The port after Switchboard's (8081 beside 8080) where it is free.
    let port = bind
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse::<u16>().ok())
        .filter(|p| *p != 0)
        .map_or(0, |p| p.saturating_add(1));
    let (chat, template, reply_url) = WebChat::start(
        &chat_host(bind),
        port,
        CHAT_CHANNEL,
        &secret,
        data_dir.join(WEB_CHAT_FILE),
        agents,
    )
    .await?;
    for channel in &mut config.chat_channels {
        channel.chat_url_template = Some(template.clone());
        // Agents may write in the chat from the task page too.
        channel.relay = true;
        channel.reply_url = Some(reply_url.clone());
    }
    Ok((chat, template))
}

/// The demo's first chat: a visitor asks Support about a parcel.
pub async fn first_chat(chat: &WebChat) -> Result<String, web_chat::SendError> {
    let id = chat
        .open(
            "Dana Visitor",
            "dana@visitor.example",
            "Where is my parcel?",
            serde_json::json!({"order": "A-1001"}),
            "Hello! My parcel A-1001 was due on Monday and has not arrived.",
        )
        .await?;
    chat.say(
        &id,
        None,
        "The tracking page says 'in transit' since last week.",
    )
    .await?;
    Ok(id)
}

/// The host part of `bind` for another listener beside it, and the host
/// name a browser reaches it by.
fn chat_host(bind: &str) -> String {
    let host = match bind.parse::<std::net::SocketAddr>() {
        Ok(addr) if addr.ip().is_unspecified() => return "127.0.0.1".into(),
        Ok(addr) => addr.ip().to_string(),
        Err(_) => bind.rsplit_once(':').map_or(bind, |(h, _)| h).to_string(),
    };
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .to_string()
}

/// Runs the demo until Ctrl-C.
pub async fn run(data_dir: &Path, bind: &str) -> anyhow::Result<()> {
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("cannot create {}", data_dir.display()))?;
    // Held until the process ends: a second demo on this folder is refused.
    let _lock = lock_data_dir(data_dir)?;
    let tokens = demo_tokens(data_dir)?;
    let maildir = data_dir.join("maildir");
    let first_run = !maildir.join("new").exists();
    crate::ingest::maildir::ensure_layout(&maildir)?;
    let mut config = demo_config(data_dir, bind, &tokens);
    let (chat, template) = start_web_chat(data_dir, bind, &tokens, &mut config).await?;
    let running = Running::start(&config).await?;
    seed(&running.store).await?;
    // After the directory is seeded, so senders resolve to their contacts.
    let delivered = if first_run {
        deliver_samples(&maildir)?
    } else {
        0
    };
    let url = running.url();
    chat.connect(&url);
    if first_run && let Err(e) = first_chat(&chat).await {
        tracing::warn!(error = %e, "the demo's simulated chat did not start");
    }
    let chat_home = template
        .split("/chat/")
        .next()
        .unwrap_or_default()
        .to_string();
    println!("\nSwitchboard demo is running at {url}/");
    println!("Database: {}", data_dir.join("demo.db").display());
    println!(
        "Mailbox:  {} (Maildir; {delivered} sample mail(s) delivered now; drop more .eml files into its new/ folder)",
        data_dir.join("maildir").display()
    );
    println!(
        "Chat:     a simulated web chat at {chat_home}/ (channel {CHAT_CHANNEL}) opened a chat with Support{}; start more there, and Open chat leads to it",
        if first_run {
            " now"
        } else {
            " on the first start"
        }
    );
    println!(
        "Outbox:   {} (replies are written here as .eml files instead of being sent)",
        data_dir.join("outbox").display()
    );
    println!(
        "\nSign in: open a link below (one per agent). The tokens are kept in {}, so the links keep working after a restart.",
        data_dir.join(TOKENS_FILE).display()
    );
    for a in &config.agents {
        let token = a
            .resolved_token
            .as_ref()
            .map(|t| t.expose())
            .unwrap_or_default();
        // The admin's link opens the operators' page; an agent's, My Sessions.
        let (role, next) = if a.admin {
            ("admin", "?next=/ops")
        } else {
            ("agent", "")
        };
        println!(
            "  {:<6} {:<5} {url}/sign-in{next}#token={token}",
            a.id, role
        );
    }
    println!(
        "\nMy Sessions is at {url}/ and the operators' page at {url}/ops (admin).\n\
         Support offers its mail and chats to the agents whose page is open (Accept or Decline on the card);\n\
         Sales tasks wait under Waiting work for a Pick up.\n\
         The API takes the same tokens: curl -H 'Authorization: Bearer <token>' {url}/api/v1/me/sessions\n\
         Replies are written to {} as .eml files. Ctrl-C stops.\n",
        data_dir.join("outbox").display()
    );
    running.run_until_signal().await
}
