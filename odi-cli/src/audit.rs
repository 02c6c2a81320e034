//! `odi audit`: a directory's audit log, newest first, through `GET /api/v1/audit`.

use anyhow::Result;
use clap::Args;
use odi_core::audit::{AuditEntry, AuditPage, MAX_LIMIT};

use crate::Target;
use crate::output::{self, Align, Table};

#[derive(Args)]
pub(crate) struct AuditArgs {
    #[command(flatten)]
    target: Target,
    /// How many entries to show.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_LIMIT)))]
    limit: u32,
    /// Show entries older than this entry id (the next page).
    #[arg(long, value_name = "ID")]
    before: Option<u64>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

pub(crate) async fn run(args: AuditArgs) -> Result<()> {
    let page: AuditPage = args.target.admin()?.audit(args.limit, args.before).await?;
    if args.json {
        output::line(&serde_json::to_string_pretty(&page)?);
        return Ok(());
    }
    if page.entries.is_empty() {
        eprintln!("no admin changes recorded{}", if args.before.is_some() { " before that entry" } else { "" });
        return Ok(());
    }
    output::emit(&table(&page.entries));
    if let Some(next) = page.next_before {
        eprintln!("older entries: odi audit --before {next}");
    }
    Ok(())
}

fn table(entries: &[AuditEntry]) -> String {
    let mut table = Table::new(&[
        ("ID", Align::Right),
        ("TIME", Align::Left),
        ("WHO", Align::Left),
        ("ACTION", Align::Left),
        ("TARGET", Align::Left),
        ("DETAIL", Align::Left),
        ("FROM", Align::Left),
        ("OUTCOME", Align::Left),
    ]);
    for e in entries {
        let outcome = if e.error.is_empty() { e.status.to_string() } else { format!("{} {}", e.status, e.error) };
        table.row(vec![e.id.to_string(), time(e.time_ms), e.who.clone(), e.action.clone(), e.target.clone(), e.detail.clone(), e.client.clone(), outcome]);
    }
    table.render()
}

/// Milliseconds since the epoch as `2026-01-02T03:04:05Z`.
fn time(ms: u64) -> String {
    let (year, month, day, h, m, s) = odi_core::time::UnixTime(ms / 1000).civil();
    format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}Z")
}

#[cfg(test)]
mod tests {
    #[test]
    fn times_read_as_utc() {
        assert_eq!(super::time(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::time(1_780_000_000_999), "2026-05-28T20:26:40Z");
    }
}
