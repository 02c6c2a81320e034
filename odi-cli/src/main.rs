//! The `odi` binary: parses flags and config, then calls odi-net. Nothing else lives here.

use std::io::IsTerminal as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow, bail};
use clap::{Args, CommandFactory as _, Parser, Subcommand};
use odi_client::admin::RelayAction;
use odi_core::api::{ChangeTags, CreateCatalog, CreateLink, CreateToken};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;

/// Every `println!` in this crate goes through `output::line`: a reader that went away
/// (`odi … | head -1`) ends the command quietly instead of panicking it.
macro_rules! println {
    () => {
        $crate::output::line("")
    };
    ($($arg:tt)*) => {
        $crate::output::line(&format!($($arg)*))
    };
}

mod admin;
mod audit;
#[cfg(test)]
mod config_examples;
mod dev;
mod get;
mod listing;
mod output;
mod publish;
mod stores;
mod units;
mod webhooks;

use admin::{Admin, encode_path};

#[derive(Parser)]
#[command(name = "odi", version, about = "ODI: verified release distribution through directories and volunteer relays")]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// PEM file of CA certificates to trust for https:// besides the system roots (any
    /// command, daemons too); may be given more than once.
    #[arg(long = "ca-file", env = "ODI_CA_FILE", global = true, value_name = "FILE")]
    ca_files: Vec<PathBuf>,
    /// Log lines on stderr as text (the default) or as one JSON object per line.
    #[arg(long, env = "ODI_LOG_FORMAT", global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Log every HTTP request a daemon answers (method, path, status, bytes, time) at info level
    /// under the `odi::access` target, in the --log-format.
    #[arg(long, env = "ODI_ACCESS_LOG", global = true)]
    access_log: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
#[allow(clippy::large_enum_variant, reason = "parsed once per process; the daemons' flags are the large variants")]
enum Command {
    /// Run a directory: catalogs, the relay table, and redirects to relays.
    Directory(DirectoryArgs),
    /// Run a relay: cache part of a directory's catalogs and serve it.
    Relay(RelayArgs),
    /// Create or list catalogs.
    #[command(subcommand)]
    Catalog(CatalogCommand),
    /// List the artifacts of a catalog.
    Ls(LsArgs),
    /// Upload files, or whole directory trees, into a catalog.
    #[command(long_about = PUBLISH_HELP)]
    Publish(PublishArgs),
    /// Withdraw one name (--catalog NAME PATH), or bar an artifact's bytes everywhere (--digest).
    ///
    /// `odi expunge --catalog NAME PATH` withdraws that one name: it answers 410 from then on,
    /// and the same bytes stay served under any other name that holds them (relays drop them
    /// once no name does). In an immutable catalog the name is not reused for other bytes.
    ///
    /// `odi expunge --digest sha256:HEX` bars the bytes themselves, for a defective or dangerous
    /// artifact: every name holding them, in every catalog, answers 410, `/blobs/sha256/HEX`
    /// too, publishing them again anywhere is refused, and relays delete them at once.
    Expunge(ExpungeArgs),
    /// Show the relays a directory knows and their state.
    Relays(RelaysArgs),
    /// Show the audit log: every admin change, who made it, from where, and how it ended.
    Audit(audit::AuditArgs),
    /// Named enrollment tokens, one per relay operator: add, list, revoke.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Link this directory with another one, list links, remove one.
    #[command(subcommand)]
    Link(LinkCommand),
    /// Webhooks: POST signed notices of admin changes and relay events to a URL.
    #[command(subcommand)]
    Webhook(webhooks::WebhookCommand),
    /// Add or remove tags of a published artifact (links and relays filter by tag).
    Tag(TagArgs),
    /// Download a URL, verifying its SHA-256.
    Get(GetCliArgs),
    /// Start a directory and relays on loopback with a sample catalog.
    Dev(DevArgs),
    /// Print a shell completion script, e.g. `odi completions bash > /etc/bash_completion.d/odi`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page, odi(1), in roff, e.g. `odi man > odi.1 && man ./odi.1`.
    Man,
}

#[derive(Args)]
struct DirectoryArgs {
    /// Address to listen on, e.g. 0.0.0.0:7700.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Data directory (catalogs, blobs, keys, tokens).
    #[arg(long)]
    data: Option<PathBuf>,
    /// The URL clients and relays use to reach this directory.
    #[arg(long)]
    public_url: Option<String>,
    /// How often relays report in (e.g. 5s).
    #[arg(long, value_parser = units::parse_duration)]
    heartbeat_interval: Option<Duration>,
    /// A relay silent this long gets no more redirects (e.g. 15s).
    #[arg(long, value_parser = units::parse_duration)]
    lease: Option<Duration>,
    /// How often each relay's public URL is checked; a failed check stops redirects at once.
    #[arg(long, value_parser = units::parse_duration)]
    probe_interval: Option<Duration>,
    /// How often each relay's content is audited (one random chunk, hash-checked).
    #[arg(long, value_parser = units::parse_duration)]
    audit_interval: Option<Duration>,
    /// Accept loopback and private relay URLs even when this directory's public URL is not in
    /// the same class (link-local and cloud metadata addresses stay refused).
    #[arg(long)]
    allow_private_relays: bool,
    /// Let origin catalogs (--origin) reach loopback and private addresses (only at the host and
    /// port each origin names). Link-local and cloud metadata addresses stay refused.
    #[arg(long)]
    allow_private_origins: bool,
    /// How long a new or readmitted relay serves only clients that verify what they get
    /// (metalink, odi get) before plain clients are sent to it (default 6h; 0s: off).
    #[arg(long, value_parser = units::parse_duration_or_zero)]
    probation: Option<Duration>,
    /// How long a relay keeps serving a catalog on a signed head without renewal (default 24h):
    /// heads are renewed on every heartbeat, so this is how long relays ride out an outage of
    /// this directory before they freeze its catalogs. At least three heartbeat intervals.
    #[arg(long, value_parser = units::parse_duration)]
    head_ttl: Option<Duration>,
    /// Named admins: an LDAP server (ldap://HOST:PORT) that checks user names and passwords
    /// (`Authorization: Basic` on the admin API, the dashboard's user login).
    #[arg(long, env = "ODI_LDAP_URL", requires_all = ["ldap_bind_dn", "ldap_admin_group"])]
    ldap_url: Option<String>,
    /// The DN a user binds as, `{user}` standing for the user name (escaped per RFC 4514),
    /// e.g. 'uid={user},ou=people,dc=example,dc=org'.
    #[arg(long, env = "ODI_LDAP_BIND_DN", value_name = "DN_TEMPLATE")]
    ldap_bind_dn: Option<String>,
    /// The group whose members (member or uniqueMember holding their DN) are admins,
    /// e.g. 'cn=odi-admins,ou=groups,dc=example,dc=org'.
    #[arg(long, env = "ODI_LDAP_ADMIN_GROUP", value_name = "GROUP_DN")]
    ldap_admin_group: Option<String>,
    /// Webhook retry timing (tests): first wait, longest wait, give-up age, per-attempt timeout.
    #[arg(long, hide = true, value_parser = units::parse_duration)]
    webhook_retry_base: Option<Duration>,
    #[arg(long, hide = true, value_parser = units::parse_duration)]
    webhook_retry_cap: Option<Duration>,
    #[arg(long, hide = true, value_parser = units::parse_duration)]
    webhook_give_up: Option<Duration>,
    #[arg(long, hide = true, value_parser = units::parse_duration)]
    webhook_timeout: Option<Duration>,
    #[command(flatten)]
    tls: ListenTls,
    /// Run as a meta-directory: hold no catalogs, send each client to the best healthy
    /// --reference directory serving the catalog (by the client's country, then continent).
    #[arg(long)]
    meta: bool,
    /// With --meta: a directory to send clients to, optionally for a region (an ISO country
    /// code like DE, or a continent code: AF AN AS EU NA OC SA), e.g. EU=https://eu.example.org.
    #[arg(long = "reference", value_name = "[REGION=]URL", requires = "meta")]
    references: Vec<String>,
    /// With --meta: a MaxMind database (.mmdb, e.g. GeoLite2-Country) to locate clients with.
    #[arg(long, value_name = "FILE.mmdb", requires = "meta")]
    geoip: Option<PathBuf>,
    /// With --meta: take the client's address from X-Forwarded-For when the connection comes
    /// from this range (a proxy or load balancer in front), e.g. 10.0.0.0/8.
    #[arg(long = "trust-forwarded-for", value_name = "CIDR", requires = "meta")]
    trust_forwarded_for: Vec<String>,
    /// Serve `GET /metrics` (Prometheus) on this address, with no token, instead of on the
    /// public port (where it needs the admin token), e.g. 127.0.0.1:9770.
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<SocketAddr>,
    /// Where the directory's records (catalogs, log, relays, tokens) live: `sqlite` (the
    /// default, {data}/directory.sqlite3) or a PostgreSQL URL, postgres://user:password@host:port/db.
    #[arg(long, env = "ODI_METADATA", value_name = "sqlite|postgres://...")]
    metadata: Option<String>,
    /// Where the directory's blobs live: `local` (the default, {data}/blobs) or an S3 bucket,
    /// s3://bucket[/prefix], with credentials and region from the AWS_* environment; for an
    /// S3-compatible server (MinIO, Ceph, moto) add its endpoint:
    /// s3://bucket?endpoint=http://127.0.0.1:9000.
    #[arg(long, env = "ODI_BLOBS", value_name = "local|s3://...")]
    blobs: Option<String>,
    /// TOML file with any of the flags above (flags win).
    #[arg(long)]
    config: Option<PathBuf>,
}

#[derive(Args)]
struct RelayArgs {
    #[arg(long)]
    listen: Option<SocketAddr>,
    #[arg(long)]
    data: Option<PathBuf>,
    /// Directory URL to enroll with; repeat it to serve several directories (each is offered an
    /// equal share of --disk-budget and --bandwidth). ODI_ENROLL_TOKEN then holds one token for
    /// all, or one per --directory in the same order, separated by commas.
    #[arg(long = "directory")]
    directories: Vec<String>,
    /// The URL clients reach this relay at; the directory tests it before trusting the relay.
    #[arg(long)]
    public_url: Option<String>,
    /// Disk space the relay may fill, e.g. 10GiB.
    #[arg(long, value_parser = units::parse_size)]
    disk_budget: Option<u64>,
    /// Catalogs to carry (default: all).
    #[arg(long = "catalog")]
    catalogs: Vec<String>,
    /// Hold only artifacts carrying one of these tags (default: any).
    #[arg(long = "tag")]
    tags: Vec<String>,
    /// The directory's key to pin (the hex the directory prints at start and keeps in its data
    /// dir as directory.pub); one per --directory, in the same order. Without it the key of the
    /// directory's first answer is pinned (trust on first use). Either way the pin is kept in
    /// the relay's trust.json, and answers signed by any other key are refused.
    #[arg(long = "directory-key", value_name = "KEY")]
    directory_keys: Vec<String>,
    /// Upload bandwidth offered, e.g. 100MB/s (used to weigh assignments and redirects).
    #[arg(long, value_parser = units::parse_rate)]
    bandwidth: Option<u64>,
    /// Rate the background scrub re-reads held blobs at to find bit rot, e.g. 8MiB/s (the
    /// default); 0 turns it off (reads are still checked as they are served).
    #[arg(long, value_parser = units::parse_rate)]
    scrub_rate: Option<u64>,
    /// A tree on this machine that already holds a catalog's artifacts under their paths, e.g.
    /// the mirror this relay runs beside: --local-tree debian=/srv/mirror/debian. Assigned
    /// artifacts found there with the right bytes are hard-linked into the store (copied when
    /// on another filesystem) instead of downloaded; the tree is never written. Repeatable.
    #[arg(long = "local-tree", value_name = "CATALOG=DIR")]
    local_trees: Vec<odi_net::relay::LocalTree>,
    #[command(flatten)]
    tls: ListenTls,
    /// Serve `GET /metrics` (Prometheus) on this address instead of on the public port,
    /// e.g. 127.0.0.1:9771.
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<SocketAddr>,
    #[arg(long)]
    config: Option<PathBuf>,
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Make an enrollment token for one operator; it is printed once (give it to them as
    /// ODI_ENROLL_TOKEN for their relays). With --catalog, a publisher's token instead: it may
    /// publish and tag in that catalog and nothing else (the publisher sets it as ODI_ADMIN_TOKEN).
    Add {
        name: String,
        /// A publisher's token for this catalog.
        #[arg(long, conflicts_with = "single_use")]
        catalog: Option<String>,
        /// An enrollment token that enrolls one relay only (that relay may enroll again).
        #[arg(long)]
        single_use: bool,
        #[command(flatten)]
        target: Target,
    },
    /// List the named tokens and how many relays enrolled with each.
    Ls {
        #[command(flatten)]
        target: Target,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a token: nobody enrolls or publishes with it again, and every relay enrolled with
    /// it is quarantined (`odi relays --readmit` lifts that for one relay).
    #[command(alias = "rm")]
    Revoke {
        name: String,
        #[command(flatten)]
        target: Target,
    },
}

#[derive(Subcommand)]
enum CatalogCommand {
    /// Create a catalog.
    Create {
        name: String,
        #[command(flatten)]
        target: Target,
        /// Relays that should hold each artifact.
        #[arg(long)]
        replicas: Option<u32>,
        /// Chunk size for verification, e.g. 1MiB.
        #[arg(long, value_parser = units::parse_size)]
        chunk_size: Option<u64>,
        /// Let paths be published again with other bytes (index files such as `Packages`,
        /// `repomd.xml`, `latest.txt`); their answers are then revalidated by caches
        /// (`no-cache` + ETag). Without it a path keeps its first bytes for good and is cached
        /// as immutable; publishing other bytes under it is refused.
        #[arg(long)]
        mutable: bool,
        /// Mirror this download tree (an nginx, Apache or lighttpd autoindex URL): new files
        /// are pulled on a schedule, on `odi catalog sync` and when a client first asks for
        /// them; a file with a checksum file (SHA256SUMS, sha256sum.txt, *.sha256) is
        /// published only if it matches. Files removed at the origin stay.
        /// `registry+https://host[:port][/prefix]` instead mirrors a container registry:
        /// images are pulled through on first request, every byte checked by digest.
        #[arg(long, value_name = "URL")]
        origin: Option<String>,
        /// Time between scheduled pulls from the origin (default 1h).
        #[arg(long, value_parser = units::parse_duration, requires = "origin")]
        origin_interval: Option<Duration>,
    },
    /// Pull from a catalog's origin now and print what was published, unchanged or refused.
    Sync {
        name: String,
        #[command(flatten)]
        target: Target,
    },
    /// List catalogs.
    Ls {
        #[command(flatten)]
        target: Target,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// List the paths of a catalog that linked directories bound to different bytes, with the
    /// bytes every directory serves (the winner) and the ones kept aside (the losers).
    /// Publish the path again, or expunge a loser, to resolve one.
    Conflicts {
        name: String,
        #[command(flatten)]
        target: Target,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum LinkCommand {
    /// Link this directory (--directory, its admin token in ODI_ADMIN_TOKEN) with another
    /// (--peer, its link token in ODI_PEER_TOKEN): both pin each other's key, and the linked
    /// catalogs replicate both ways from then on.
    Add {
        #[command(flatten)]
        target: Target,
        /// The other directory's URL.
        #[arg(long)]
        peer: String,
        /// Catalogs that cross the link (default: all).
        #[arg(long = "catalog")]
        catalogs: Vec<String>,
        /// Only artifacts carrying one of these tags cross (default: any).
        #[arg(long = "tag")]
        tags: Vec<String>,
    },
    /// List this directory's links, with how far each has caught up.
    Ls {
        #[command(flatten)]
        target: Target,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Remove a link (on this side; what crossed it stays).
    Rm {
        #[command(flatten)]
        target: Target,
        /// The linked directory's URL (or its id).
        #[arg(long)]
        peer: String,
    },
}

#[derive(Args)]
struct TagArgs {
    #[command(flatten)]
    target: Target,
    #[arg(long)]
    catalog: String,
    /// The artifact's path in the catalog.
    path: String,
    /// Tag to add (repeatable).
    #[arg(long = "add", value_name = "TAG", required_unless_present = "remove")]
    add: Vec<String>,
    /// Tag to remove (repeatable).
    #[arg(long = "remove", value_name = "TAG")]
    remove: Vec<String>,
}

#[derive(Args)]
struct Target {
    /// Directory URL, e.g. http://127.0.0.1:7700.
    #[arg(long, env = "ODI_DIRECTORY")]
    directory: String,
    /// File holding the admin token (default: $ODI_ADMIN_TOKEN).
    #[arg(long)]
    token_file: Option<PathBuf>,
}

impl Target {
    fn admin(&self) -> Result<Admin> {
        Admin::from_env(&self.directory, self.token_file.as_deref())
    }
}

const PUBLISH_HELP: &str = "Upload files, or whole directory trees, into a catalog.

Naming: a DIR publishes every file under it at its path relative to DIR (dist/a/b.txt as a/b.txt),
or under --path P as P/a/b.txt. A FILE is published at its file name; a single FILE with --path P at
exactly P. With several FILE or DIR arguments, --path must be a prefix ending in `/` (e.g. v1.2/).

Hidden files and directories (names starting with `.`) are skipped. Symbolic links to files are
followed; links to directories are not. A file the catalog already lists with the same SHA-256 is
not uploaded again (`unchanged`). A failed file does not stop the others: the command ends with a
summary line and exits non-zero if any file failed.";

#[derive(Args)]
struct LsArgs {
    #[command(flatten)]
    target: Target,
    #[arg(long)]
    catalog: String,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct PublishArgs {
    #[command(flatten)]
    target: Target,
    #[arg(long)]
    catalog: String,
    /// Path inside the catalog: exactly this for a single FILE, else a prefix (see above).
    #[arg(long)]
    path: Option<String>,
    /// Tag every published file with this (repeatable); links and relays filter by tag.
    #[arg(long = "tag")]
    tags: Vec<String>,
    /// Files and directories to publish.
    #[arg(required = true, value_name = "FILE|DIR")]
    files: Vec<PathBuf>,
}

#[derive(Args)]
struct ExpungeArgs {
    #[command(flatten)]
    target: Target,
    /// The catalog of PATH.
    #[arg(long, required_unless_present = "digest", conflicts_with = "digest")]
    catalog: Option<String>,
    /// The name to withdraw (only this name: other names for the same bytes keep working).
    #[arg(required_unless_present = "digest", requires = "catalog", conflicts_with = "digest")]
    path: Option<String>,
    /// Bar these bytes under every name, network-wide (sha256:HEX).
    #[arg(long, value_name = "sha256:HEX")]
    digest: Option<odi_core::Digest>,
}

#[derive(Args)]
struct RelaysArgs {
    #[command(flatten)]
    target: Target,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Drain this relay: no new assignments; it stops serving once its artifacts live elsewhere.
    /// RELAY_ID may be any unique prefix of the id, such as the short ids the table shows.
    #[arg(long, value_name = "RELAY_ID")]
    drain: Option<String>,
    /// Stop draining this relay.
    #[arg(long, value_name = "RELAY_ID")]
    undrain: Option<String>,
    /// Lift this relay's quarantine (it must pass a self-test before it serves again).
    #[arg(long, value_name = "RELAY_ID")]
    readmit: Option<String>,
}

#[derive(Args)]
struct GetCliArgs {
    url: String,
    /// Output file, or a directory (existing, or ending in `/`) to save the URL's last segment
    /// in (default: that name in the current directory; `-` for standard output).
    #[arg(short, long, value_name = "FILE|DIR")]
    output: Option<PathBuf>,
    /// Continue a partial download.
    #[arg(short = 'c', long = "continue")]
    resume: bool,
    /// Expected SHA-256 (hex), for servers that send no digest.
    #[arg(long)]
    sha256: Option<String>,
}

#[derive(Args)]
struct DevArgs {
    /// Relays to start.
    #[arg(long, default_value_t = 2)]
    relays: u8,
    /// Data directory (default: odi-dev under the system temp dir).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Serve everything over HTTPS, with a dev CA and certificates made in the data directory.
    #[arg(long)]
    tls: bool,
}

/// Every daemon flag, as it may appear in `--config`.
#[derive(Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<SocketAddr>,
    data: Option<PathBuf>,
    public_url: Option<String>,
    heartbeat_interval: Option<String>,
    lease: Option<String>,
    probe_interval: Option<String>,
    audit_interval: Option<String>,
    allow_private_relays: Option<bool>,
    allow_private_origins: Option<bool>,
    probation: Option<String>,
    head_ttl: Option<String>,
    ldap_url: Option<String>,
    ldap_bind_dn: Option<String>,
    ldap_admin_group: Option<String>,
    #[serde(default)]
    directory: Vec<String>,
    #[serde(default)]
    directory_key: Vec<String>,
    disk_budget: Option<String>,
    #[serde(default)]
    catalog: Vec<String>,
    #[serde(default)]
    tag: Vec<String>,
    bandwidth: Option<String>,
    scrub_rate: Option<String>,
    #[serde(default)]
    local_tree: Vec<String>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    acme_directory: Option<String>,
    #[serde(default)]
    acme_domain: Vec<String>,
    acme_email: Option<String>,
    meta: Option<bool>,
    #[serde(default)]
    reference: Vec<String>,
    geoip: Option<PathBuf>,
    #[serde(default)]
    trust_forwarded_for: Vec<String>,
    metrics_listen: Option<SocketAddr>,
    metadata: Option<String>,
    blobs: Option<String>,
}

impl FileConfig {
    fn load(path: Option<&Path>) -> Result<Self> {
        let Some(path) = path else { return Ok(Self::default()) };
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read config {}", path.display()))?;
        toml::from_str(&text).map_err(|e| anyhow!("config {}: {}", path.display(), e.message()))
    }
}

/// Request handling allocates many small, short-lived buffers across worker threads; mimalloc's
/// per-thread free lists take about a fifth off the CPU time of a `302` compared to glibc malloc.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("ODI_LOG").unwrap_or_else(|_| {
        let default = if matches!(cli.command, Command::Directory(_) | Command::Relay(_)) { "info" } else { "warn" };
        tracing_subscriber::EnvFilter::new(default)
    });
    // Colour only for a person at a terminal, and never against NO_COLOR (https://no-color.org).
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let filter = if cli.access_log { filter.add_directive(odi_net::http::ACCESS_LOG_DIRECTIVE.parse().expect("a valid directive")) } else { filter };
    odi_net::http::set_access_log(cli.access_log);
    let fmt = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => fmt.with_ansi(ansi).init(),
        LogFormat::Json => fmt.json().with_ansi(false).init(),
    }
    match &cli.command {
        Command::Completions { shell } => {
            clap_complete::generate(*shell, &mut Cli::command(), "odi", &mut std::io::stdout());
            return;
        }
        Command::Man => {
            if let Err(e) = clap_mangen::Man::new(Cli::command()).render(&mut std::io::stdout()) {
                eprintln!("error: cannot write the man page: {e}");
                std::process::exit(1);
            }
            return;
        }
        _ => {}
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    for ca in &cli.ca_files {
        if let Err(e) = odi_net::tls::trust_ca_file(ca) {
            eprintln!("error: --ca-file: {e}");
            std::process::exit(1);
        }
    }
    if let Err(e) = runtime.block_on(run(cli.command)) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

async fn bind(addr: SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr}; is the port taken?"))
}

/// How a daemon's listener gets its certificate: from files, or from an ACME CA.
#[derive(clap::Args, Debug)]
struct ListenTls {
    /// PEM certificate chain to serve HTTPS with (with --tls-key); reloaded when the file changes.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Serve HTTPS with a certificate got and renewed from this ACME CA (its directory URL, e.g.
    /// https://acme-v02.api.letsencrypt.org/directory), validated by tls-alpn-01 on this
    /// listener: the CA must reach it on port 443 at the names. Kept in {data}/acme/.
    #[arg(long, value_name = "URL", env = "ODI_ACME_DIRECTORY", conflicts_with = "tls_cert")]
    acme_directory: Option<String>,
    /// A DNS name for the ACME certificate; repeat for several (default: the --public-url host).
    #[arg(long = "acme-domain", value_name = "NAME")]
    acme_domains: Vec<String>,
    /// Contact address given to the ACME CA for the account (expiry and incident mail).
    #[arg(long, value_name = "EMAIL")]
    acme_email: Option<String>,
}

impl ListenTls {
    /// The flags, else the config file's keys.
    fn or_file(self, file: &FileConfig) -> Self {
        Self {
            tls_cert: self.tls_cert.or_else(|| file.tls_cert.clone()),
            tls_key: self.tls_key.or_else(|| file.tls_key.clone()),
            acme_directory: self.acme_directory.or_else(|| file.acme_directory.clone()),
            acme_domains: if self.acme_domains.is_empty() { file.acme_domain.clone() } else { self.acme_domains },
            acme_email: self.acme_email.or_else(|| file.acme_email.clone()),
        }
    }
}

/// Binds `addr`, serving HTTPS when a certificate and key are given, or an ACME CA (then the
/// certificate is kept in `{data}/acme/` and renewed in the background).
async fn listen(addr: SocketAddr, tls: ListenTls, data: &Path, public_url: Option<&str>) -> Result<odi_net::Listener> {
    let server_tls = match (tls.tls_cert, tls.tls_key, tls.acme_directory) {
        (Some(_), _, Some(_)) => bail!("--acme-directory gets the certificate itself: give it or --tls-cert, not both"),
        (Some(cert), Some(key), None) => Some(odi_net::tls::ServerTls::from_pem_files(cert, key)?),
        (None, None, None) if tls.acme_domains.is_empty() && tls.acme_email.is_none() => None,
        (None, None, None) => bail!("--acme-domain and --acme-email need --acme-directory (the ACME CA's URL)"),
        (None, None, Some(directory_url)) => {
            let domains = if tls.acme_domains.is_empty() { public_url.and_then(url_host).into_iter().collect() } else { tls.acme_domains };
            let acme = odi_net::acme::AcmeOptions { directory_url, domains, email: tls.acme_email, dir: data.join("acme") };
            let server_tls = acme.server_tls()?;
            eprintln!("certificate for {} from {} (kept in {})", acme.domains.join(", "), acme.directory_url, acme.dir.display());
            tokio::spawn(odi_net::acme::run(acme, server_tls.clone()));
            Some(server_tls)
        }
        (Some(_), None, None) => bail!("--tls-cert needs --tls-key (or `tls_key` in --config)"),
        (None, Some(_), _) => bail!("--tls-key needs --tls-cert (or `tls_cert` in --config)"),
    };
    let tcp = bind(addr).await?;
    Ok(match server_tls {
        Some(tls) => odi_net::Listener::tls(tcp, tls),
        None => odi_net::Listener::plain(tcp),
    })
}

/// The host of `http(s)://host[:port]/...`, for a certificate's name.
fn url_host(url: &str) -> Option<String> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split(['/', '?', '#']).next()?;
    let host = match authority.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => authority,
    };
    (!host.is_empty() && !host.starts_with('[')).then(|| host.to_ascii_lowercase())
}

async fn run(command: Command) -> Result<()> {
    match command {
        Command::Directory(args) => {
            let file = FileConfig::load(args.config.as_deref())?;
            if args.meta || file.meta.unwrap_or(false) {
                return meta_directory(args, file).await;
            }
            let tls = args.tls.or_file(&file);
            let listen = args.listen.or(file.listen).ok_or_else(|| anyhow!("--listen is required (or `listen` in --config)"))?;
            let data = args.data.or(file.data).ok_or_else(|| anyhow!("--data is required (or `data` in --config)"))?;
            let mut options = odi_net::directory::DirectoryOptions::new(&data);
            options.public_url = args.public_url.or(file.public_url);
            if let Some(d) = args.heartbeat_interval.map(Ok).or_else(|| file.heartbeat_interval.as_deref().map(units::parse_duration)) {
                options.heartbeat_interval = d.map_err(|e| anyhow!("heartbeat_interval: {e}"))?;
            }
            if let Some(d) = args.lease.map(Ok).or_else(|| file.lease.as_deref().map(units::parse_duration)) {
                options.lease = d.map_err(|e| anyhow!("lease: {e}"))?;
            }
            if let Some(d) = args.probe_interval.map(Ok).or_else(|| file.probe_interval.as_deref().map(units::parse_duration)) {
                options.probe_interval = d.map_err(|e| anyhow!("probe_interval: {e}"))?;
            }
            if let Some(d) = args.audit_interval.map(Ok).or_else(|| file.audit_interval.as_deref().map(units::parse_duration)) {
                options.audit_interval = d.map_err(|e| anyhow!("audit_interval: {e}"))?;
            }
            if let Some(d) = args.probation.map(Ok).or_else(|| file.probation.as_deref().map(units::parse_duration_or_zero)) {
                options.probation = d.map_err(|e| anyhow!("probation: {e}"))?;
            }
            if let Some(d) = args.head_ttl.map(Ok).or_else(|| file.head_ttl.as_deref().map(units::parse_duration)) {
                options.head_ttl = d.map_err(|e| anyhow!("head_ttl: {e}"))?;
            }
            if options.head_ttl < options.heartbeat_interval * 3 {
                bail!(
                    "the head TTL ({:?}) must be at least three heartbeat intervals ({:?}): relays would freeze between renewals",
                    options.head_ttl,
                    options.heartbeat_interval
                );
            }
            if options.lease < options.heartbeat_interval * 2 {
                bail!("the lease ({:?}) must be at least twice the heartbeat interval ({:?})", options.lease, options.heartbeat_interval);
            }
            options.allow_private_relays = args.allow_private_relays || file.allow_private_relays.unwrap_or(false);
            options.allow_private_origins = args.allow_private_origins || file.allow_private_origins.unwrap_or(false);
            let retry = &mut options.webhook_retry;
            for (given, field) in [
                (args.webhook_retry_base, &mut retry.base),
                (args.webhook_retry_cap, &mut retry.cap),
                (args.webhook_give_up, &mut retry.give_up),
                (args.webhook_timeout, &mut retry.timeout),
            ] {
                if let Some(d) = given {
                    *field = d;
                }
            }
            let ldap =
                [(args.ldap_url, file.ldap_url), (args.ldap_bind_dn, file.ldap_bind_dn), (args.ldap_admin_group, file.ldap_admin_group)].map(|(a, f)| a.or(f));
            options.ldap = match ldap {
                [None, None, None] => None,
                [Some(url), Some(bind_dn), Some(admin_group)] => Some(odi_net::directory::LdapOptions { url, bind_dn, admin_group }),
                _ => bail!("named admins need all three of --ldap-url, --ldap-bind-dn and --ldap-admin-group (or ldap_url, ldap_bind_dn, ldap_admin_group)"),
            };
            options.admin_token = std::env::var("ODI_ADMIN_TOKEN").ok();
            options.enroll_token = std::env::var("ODI_ENROLL_TOKEN").ok();
            options.link_token = std::env::var("ODI_LINK_TOKEN").ok();
            options.meta = stores::metadata(args.metadata.or(file.metadata).as_deref()).await?;
            options.blobs = stores::blobs(args.blobs.or(file.blobs).as_deref())?;
            let listener = self::listen(listen, tls, &data, options.public_url.as_deref()).await?;
            let mut server =
                odi_net::directory::DirectoryServer::open(options).await.with_context(|| format!("cannot open the directory in {}", data.display()))?;
            if let Some(addr) = args.metrics_listen.or(file.metrics_listen) {
                let metrics = bind(addr).await?;
                eprintln!("metrics on http://{}/metrics", metrics.local_addr()?);
                server = server.with_metrics_listener(metrics);
            }
            for (what, path) in [("admin", &server.admin_token_path), ("enrollment", &server.enroll_token_path), ("link", &server.link_token_path)] {
                if let Some(path) = path {
                    eprintln!("{what} token: {}", path.display());
                }
            }
            eprintln!("directory key: {} (kept in {}; relays pin it: odi relay --directory-key KEY)", server.id(), data.join("directory.pub").display());
            eprintln!("directory {} listening on {}://{}", server.id(), listener.scheme(), listener.local_addr()?);
            server.run(listener, shutdown_signal()).await?;
        }
        Command::Relay(args) => {
            let file = FileConfig::load(args.config.as_deref())?;
            let tls = args.tls.or_file(&file);
            let listen = args.listen.or(file.listen).ok_or_else(|| anyhow!("--listen is required (or `listen` in --config)"))?;
            let data = args.data.or(file.data).ok_or_else(|| anyhow!("--data is required (or `data` in --config)"))?;
            let directories = if args.directories.is_empty() { file.directory } else { args.directories };
            if directories.is_empty() {
                bail!("--directory is required (or `directory` in --config); repeat it to serve several directories");
            }
            let public_url = args.public_url.or(file.public_url).ok_or_else(|| anyhow!("--public-url is required: the URL clients reach this relay at"))?;
            let disk_budget = match args.disk_budget {
                Some(b) => b,
                None => units::parse_size(file.disk_budget.as_deref().ok_or_else(|| anyhow!("--disk-budget is required, e.g. --disk-budget 10GiB"))?)
                    .map_err(|e| anyhow!("disk_budget: {e}"))?,
            };
            let bandwidth = match (args.bandwidth, file.bandwidth.as_deref()) {
                (Some(b), _) => b,
                (None, Some(s)) => units::parse_rate(s).map_err(|e| anyhow!("bandwidth: {e}"))?,
                (None, None) => 0,
            };
            let scrub_rate = match (args.scrub_rate, file.scrub_rate.as_deref()) {
                (Some(r), _) => r,
                (None, Some(s)) => units::parse_rate(s).map_err(|e| anyhow!("scrub_rate: {e}"))?,
                (None, None) => odi_net::relay::DEFAULT_SCRUB_RATE,
            };
            let enroll_token =
                std::env::var("ODI_ENROLL_TOKEN").map_err(|_| anyhow!("set ODI_ENROLL_TOKEN to the directory's enrollment token (its enroll.token file)"))?;
            let options = odi_net::relay::RelayOptions {
                data_dir: data.clone(),
                directories,
                public_url,
                disk_budget,
                bandwidth,
                catalogs: if args.catalogs.is_empty() { file.catalog } else { args.catalogs },
                tags: if args.tags.is_empty() { file.tag } else { args.tags },
                enroll_token,
                max_fetches: 4,
                scrub_rate,
                directory_keys: if args.directory_keys.is_empty() { file.directory_key } else { args.directory_keys },
                local_trees: if args.local_trees.is_empty() {
                    file.local_tree.iter().map(|t| t.parse().map_err(|e| anyhow!("local_tree: {e}"))).collect::<Result<_>>()?
                } else {
                    args.local_trees
                },
            };
            let listener = self::listen(listen, tls, &data, Some(&options.public_url)).await?;
            let mut server = odi_net::relay::RelayServer::open(options).await.with_context(|| format!("cannot open the relay in {}", data.display()))?;
            if let Some(addr) = args.metrics_listen.or(file.metrics_listen) {
                let metrics = bind(addr).await?;
                eprintln!("metrics on http://{}/metrics", metrics.local_addr()?);
                server = server.with_metrics_listener(metrics);
            }
            eprintln!("relay {} listening on {}://{}", server.id(), listener.scheme(), listener.local_addr()?);
            server.run(listener, shutdown_signal()).await?;
        }
        Command::Catalog(CatalogCommand::Create { name, target, replicas, chunk_size, mutable, origin, origin_interval }) => {
            let interval = origin_interval.map(|d| d.as_secs().max(1));
            let body = CreateCatalog { name: name.clone(), replicas, chunk_size, mutable, origin: origin.clone(), origin_interval: interval };
            let created = target.admin()?.create_catalog(&body).await?;
            let kind = if mutable { ", mutable" } else { "" };
            let from = origin.as_deref().map(|o| format!(", mirroring {o}")).unwrap_or_default();
            println!("created catalog {} (replicas {}, chunk size {}{kind}{from})", name, created.replicas, created.chunk_size);
        }
        Command::Catalog(CatalogCommand::Sync { name, target }) => {
            // A sync takes as long as the downloads it makes; its report comes at the end.
            let report = target.admin()?.sync(&name).await?;
            for p in &report.published {
                println!("published {name}/{p}");
            }
            for (what, list) in [("refused", &report.refused), ("failed", &report.failed)] {
                for (path, why) in list {
                    println!("{what} {name}/{path}: {why}");
                }
            }
            let (refused, failed) = (report.refused.len(), report.failed.len());
            println!("published {}, unchanged {}, refused {refused}, failed {failed}", report.published.len(), report.unchanged);
            if refused + failed > 0 {
                bail!("{refused} files refused and {failed} failed; see above");
            }
        }
        Command::Catalog(CatalogCommand::Ls { target, json }) => {
            let list = target.admin()?.catalogs().await?;
            if json {
                output::line(&serde_json::to_string_pretty(&list)?);
            } else {
                output::emit(&listing::catalogs(&list));
            }
        }
        Command::Catalog(CatalogCommand::Conflicts { name, target, json }) => {
            let name = odi_core::path::CatalogName::new(&name).map_err(|e| anyhow!("bad catalog name `{name}`: {e}"))?;
            let list = target.admin()?.conflicts(name.as_str()).await?;
            if json {
                output::line(&serde_json::to_string_pretty(&list)?);
            } else if list.is_empty() {
                eprintln!("no conflicts in {name}");
            } else {
                output::emit(&listing::conflicts(&list));
            }
        }
        Command::Link(command) => link(command).await?,
        Command::Webhook(command) => webhooks::run(command).await?,
        Command::Audit(args) => audit::run(args).await?,
        Command::Tag(args) => tag(args).await?,
        Command::Token(TokenCommand::Add { name, catalog, single_use, target }) => {
            let catalog = catalog.as_deref().map(odi_core::path::CatalogName::new).transpose().map_err(|e| anyhow!("bad catalog name: {e}"))?;
            let made = target.admin()?.create_token(&CreateToken { name: name.clone(), catalog: catalog.clone(), single_use }).await?;
            match &catalog {
                Some(c) => eprintln!("publisher token `{name}` for catalog `{c}` (shown once; publish with ODI_ADMIN_TOKEN set to it):"),
                None if single_use => {
                    eprintln!("single-use enrollment token `{name}` (shown once; it enrolls one relay, run with ODI_ENROLL_TOKEN set to it):")
                }
                None => eprintln!("enrollment token `{name}` (shown once; its relays run with ODI_ENROLL_TOKEN set to it):"),
            }
            output::line(&made.token);
        }
        Command::Token(TokenCommand::Ls { target, json }) => {
            let list = target.admin()?.tokens().await?;
            if json {
                output::line(&serde_json::to_string_pretty(&list)?);
            } else {
                output::emit(&listing::tokens(&list));
            }
        }
        Command::Token(TokenCommand::Revoke { name, target }) => {
            let out = target.admin()?.revoke_token(&name).await?;
            let barred = out.quarantined.len();
            output::line(&format!("revoked `{name}`; {barred} relays enrolled with it are quarantined"));
        }
        Command::Ls(args) => {
            let listing = args.target.admin()?.catalog(&args.catalog).await?;
            if args.json {
                output::line(&serde_json::to_string_pretty(&listing)?);
            } else {
                output::emit(&listing::artifacts(&listing));
            }
        }
        Command::Publish(args) => {
            let (items, skipped) = publish::plan(&args.files, args.path.as_deref())?;
            let tags = check_tags(&args.tags)?;
            publish::run(&args.target.admin()?, &args.catalog, &tags, items, &skipped).await?;
        }
        Command::Expunge(args) => expunge(args).await?,
        Command::Relays(args) => {
            let admin = args.target.admin()?;
            let mut relays = admin.relays().await?;
            let actions = [(RelayAction::Drain, &args.drain), (RelayAction::Undrain, &args.undrain), (RelayAction::Readmit, &args.readmit)];
            if actions.iter().any(|(_, id)| id.is_some()) {
                for (action, prefix) in actions {
                    if let Some(prefix) = prefix {
                        // Any unique prefix of an id will do, such as the short ids the table shows.
                        let id = listing::resolve_relay(&relays, prefix)?;
                        admin.relay_action(&id, action).await?;
                        eprintln!("{}: {id}", action.as_str());
                    }
                }
                relays = admin.relays().await?;
            }
            if args.json {
                output::line(&serde_json::to_string_pretty(&relays)?);
            } else {
                output::emit(&listing::relays(&relays));
                output::emit(&listing::stats(&admin.stats().await?));
            }
        }
        Command::Get(args) => {
            let out = get::get(get::GetArgs { url: args.url, output: args.output, resume: args.resume, sha256: args.sha256 }).await?;
            if out.as_os_str() != "-" {
                eprintln!("saved {}", out.display());
            }
        }
        Command::Dev(args) => dev::run(args.relays, args.data, args.tls).await?,
        // Answered in `main`, before the runtime starts.
        Command::Completions { .. } | Command::Man => {}
    }
    Ok(())
}

/// `odi directory --meta`.
async fn meta_directory(args: DirectoryArgs, file: FileConfig) -> Result<()> {
    let tls = args.tls.or_file(&file);
    // Only the ACME certificate's default name: a meta-directory's answers carry no own URL.
    let public_url = args.public_url.clone().or_else(|| file.public_url.clone());
    let listen = args.listen.or(file.listen).ok_or_else(|| anyhow!("--listen is required (or `listen` in --config)"))?;
    let data = args.data.or(file.data).ok_or_else(|| anyhow!("--data is required (or `data` in --config)"))?;
    let references = if args.references.is_empty() { file.reference } else { args.references };
    if references.is_empty() {
        bail!("--meta needs at least one --reference [REGION=]URL, e.g. --reference EU=https://eu.example.org");
    }
    let references = references.iter().map(|r| odi_core::meta::Reference::parse(r).map_err(|e| anyhow!("--reference {r}: {e}"))).collect::<Result<Vec<_>>>()?;
    let trusted = if args.trust_forwarded_for.is_empty() { file.trust_forwarded_for } else { args.trust_forwarded_for };
    let mut options = odi_net::meta::MetaOptions::new(&data, references);
    options.trust_forwarded_for =
        trusted.iter().map(|c| odi_core::meta::Cidr::parse(c).map_err(|e| anyhow!("--trust-forwarded-for: {e}"))).collect::<Result<Vec<_>>>()?;
    options.geoip = args.geoip.or(file.geoip);
    if let Some(d) = args.probe_interval.map(Ok).or_else(|| file.probe_interval.as_deref().map(units::parse_duration)) {
        options.probe_interval = d.map_err(|e| anyhow!("probe_interval: {e}"))?;
    }
    if options.geoip.is_none() {
        eprintln!("no --geoip database: every client goes to the references with no region");
    }
    let listener = self::listen(listen, tls, &data, public_url.as_deref()).await?;
    let server = odi_net::meta::MetaServer::open(options).with_context(|| format!("cannot start the meta-directory in {}", data.display()))?;
    eprintln!("meta-directory listening on {}://{}", listener.scheme(), listener.local_addr()?);
    server.run(listener, shutdown_signal()).await?;
    Ok(())
}

async fn expunge(args: ExpungeArgs) -> Result<()> {
    let admin = args.target.admin()?;
    if let Some(digest) = args.digest {
        let out = admin.expunge_digest(&digest).await?;
        if out.already {
            println!("{digest} was already expunged");
            return Ok(());
        }
        let gone = out.expunged;
        let listed = if gone.is_empty() { "no name held it".to_owned() } else { format!("expunged {}", gone.join(", ")) };
        println!("barred {digest} everywhere: {listed}; relays delete it now and publishing it is refused");
        return Ok(());
    }
    // Both are required by clap unless --digest is given.
    let (Some(catalog), Some(path)) = (args.catalog, args.path) else { bail!("give --catalog NAME PATH, or --digest sha256:HEX") };
    let out = admin.expunge_path(&catalog, &encode_path(&path)?).await?;
    let digest = out.digest.map_or_else(|| "?".to_owned(), |d| d.to_string());
    let others = out.still_named;
    if others.is_empty() {
        println!("expunged {catalog}/{path} ({digest}); no other name holds those bytes");
    } else {
        println!("expunged {catalog}/{path} ({digest}); the same bytes stay served as {}", others.join(", "));
        println!("to bar the bytes under every name: odi expunge --directory {} --digest {digest}", args.target.directory);
    }
    Ok(())
}

/// Tags as the directory accepts them: 1 to 64 characters of `A-Za-z0-9._:-`, each once.
fn check_tags(tags: &[String]) -> Result<Vec<String>> {
    let mut out: Vec<String> = Vec::with_capacity(tags.len());
    for t in tags {
        let t = t.trim();
        let max = odi_core::federation::MAX_TAG_LEN;
        let ok = !t.is_empty() && t.len() <= max && t.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':'));
        if !ok {
            bail!("bad tag `{t}`: use 1 to {max} letters, digits, `.`, `_`, `:` or `-`");
        }
        if !out.iter().any(|o| o == t) {
            out.push(t.to_owned());
        }
    }
    Ok(out)
}

async fn link(command: LinkCommand) -> Result<()> {
    match command {
        LinkCommand::Add { target, peer, catalogs, tags } => {
            let admin = target.admin()?;
            let peer = peer.trim().trim_end_matches('/').to_owned();
            if !(peer.starts_with("http://") || peer.starts_with("https://")) {
                bail!("--peer `{peer}` is not a directory URL (http://HOST:PORT)");
            }
            let token = std::env::var("ODI_PEER_TOKEN")
                .map_err(|_| anyhow!("set ODI_PEER_TOKEN to the peer's link token (the link.token file in its data dir, or its ODI_LINK_TOKEN)"))?;
            let token = token.trim();
            if token.is_empty() {
                bail!("ODI_PEER_TOKEN is empty; set it to the peer's link token");
            }
            for c in &catalogs {
                odi_core::path::CatalogName::new(c).map_err(|e| anyhow!("bad catalog name `{c}`: {e}"))?;
            }
            let tags = check_tags(&tags)?;
            let catalogs =
                catalogs.iter().map(|c| odi_core::path::CatalogName::new(c)).collect::<Result<Vec<_>, _>>().map_err(|e| anyhow!("bad catalog name: {e}"))?;
            let made = admin.create_link(&CreateLink { peer: peer.clone(), token: token.to_owned(), catalogs, tags }).await?;
            let what = |v: &[String], all: &str| -> String { if v.is_empty() { all.to_owned() } else { v.join(", ") } };
            let made_catalogs: Vec<String> = made.catalogs.iter().map(ToString::to_string).collect();
            println!(
                "linked {} with {} (id {}); catalogs: {}; tags: {}",
                admin.directory,
                peer,
                made.peer,
                what(&made_catalogs, "all"),
                what(&made.tags, "any")
            );
        }
        LinkCommand::Ls { target, json } => {
            let list = target.admin()?.links().await?;
            if json {
                output::line(&serde_json::to_string_pretty(&list)?);
            } else {
                output::emit(&listing::links(&list));
            }
        }
        LinkCommand::Rm { target, peer } => {
            let admin = target.admin()?;
            let key = peer.trim().trim_end_matches('/');
            let out = admin.remove_link(key).await?;
            println!("unlinked {} from {} (id {})", admin.directory, out.url, out.peer);
        }
    }
    Ok(())
}

async fn tag(args: TagArgs) -> Result<()> {
    let admin = args.target.admin()?;
    let catalog = odi_core::path::CatalogName::new(&args.catalog).map_err(|e| anyhow!("bad catalog name `{}`: {e}", args.catalog))?;
    odi_core::path::ArtifactPath::new(&args.path).map_err(|e| anyhow!("bad artifact path `{}`: {e}", args.path))?;
    let (add, remove) = (check_tags(&args.add)?, check_tags(&args.remove)?);
    if let Some(both) = add.iter().find(|t| remove.contains(t)) {
        bail!("tag `{both}` is both added and removed; give it once");
    }
    let out = admin.change_tags(catalog.as_str(), &ChangeTags { path: args.path.clone(), add, remove }).await?;
    let tags = out.tags;
    let tags = if tags.is_empty() { "none".to_owned() } else { tags.join(", ") };
    println!("{catalog}/{}: tags now {tags}", args.path);
    Ok(())
}

/// Completes on Ctrl-C or SIGTERM.
pub(crate) async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { () = ctrl_c => {}, () = term => {} }
}
