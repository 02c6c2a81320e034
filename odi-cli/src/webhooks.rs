//! `odi webhook add|ls|rm|deliveries`: a directory's webhooks, through `/api/v1/webhooks`.

use anyhow::Result;
use clap::Subcommand;
use odi_core::api::AddHook;

use crate::Target;
use crate::output::{self, Align, Table};

#[derive(Subcommand)]
pub(crate) enum WebhookCommand {
    /// POST each notice of these kinds (default: every kind) to URL, signed with a secret
    /// printed once (`ODI-Signature`, see OPERATING.md). Retried with backoff until answered 2xx.
    Add {
        /// Where to POST, http:// or https://. Loopback and private addresses only when the
        /// directory runs with --allow-private-origins.
        #[arg(long)]
        url: String,
        /// A kind to deliver, e.g. relay.quarantined or artifact.published (repeatable).
        #[arg(long = "event", value_name = "KIND")]
        events: Vec<String>,
        #[command(flatten)]
        target: Target,
    },
    /// List the webhooks.
    Ls {
        #[command(flatten)]
        target: Target,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Remove a webhook and its pending deliveries.
    Rm {
        id: String,
        #[command(flatten)]
        target: Target,
    },
    /// Show a webhook's recent deliveries, newest first: attempts, status, last error.
    Deliveries {
        id: String,
        /// How many to show.
        #[arg(long, default_value_t = 20)]
        limit: u32,
        #[command(flatten)]
        target: Target,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

pub(crate) async fn run(command: WebhookCommand) -> Result<()> {
    match command {
        WebhookCommand::Add { url, events, target } => {
            let made = target.admin()?.add_webhook(&AddHook { url, events }).await?;
            eprintln!("webhook {} → {} (its signing secret, shown once, is on stdout):", made.hook.id, made.hook.url);
            output::line(&made.secret);
        }
        WebhookCommand::Ls { target, json } => {
            let hooks = target.admin()?.webhooks().await?;
            if json {
                output::line(&serde_json::to_string_pretty(&hooks)?);
            } else if hooks.is_empty() {
                eprintln!("no webhooks; `odi webhook add --url URL` adds one");
            } else {
                let mut table = Table::new(&[("ID", Align::Left), ("URL", Align::Left), ("EVENTS", Align::Left)]);
                for h in hooks {
                    table.row(vec![h.id, h.url, if h.events.is_empty() { "*".into() } else { h.events.join(",") }]);
                }
                output::emit(&table.render());
            }
        }
        WebhookCommand::Rm { id, target } => {
            let removed = target.admin()?.remove_webhook(&id).await?;
            output::line(&format!("removed webhook {} ({})", removed.id, removed.url));
        }
        WebhookCommand::Deliveries { id, limit, target, json } => {
            let list = target.admin()?.deliveries(&id, limit).await?;
            if json {
                output::line(&serde_json::to_string_pretty(&list)?);
            } else {
                let mut table = Table::new(&[
                    ("DELIVERY", Align::Left),
                    ("KIND", Align::Left),
                    ("STATUS", Align::Left),
                    ("ATTEMPTS", Align::Right),
                    ("LAST ERROR", Align::Left),
                ]);
                for d in list {
                    table.row(vec![d.id, d.kind, d.status, d.attempts.to_string(), d.last_error.unwrap_or_default()]);
                }
                output::emit(&table.render());
            }
        }
    }
    Ok(())
}
