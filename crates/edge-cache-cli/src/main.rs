//! `edge-cache`: the operator command line of an edge-cache fleet on Redis.
//!
//! Each one-shot command (`get`, `set`, `invalidate`, `notify`, `stats`) starts a short-lived
//! edge node on the fleet's Redis (the shared L2 and the event channel), does one thing and
//! exits. `watch` prints the events on the channel as they pass. `serve` runs a long-lived node
//! that answers one command per line on stdin with one JSON line on stdout: the multi-process
//! fleet tests drive it, and operators can use it to poke at a fleet by hand.
//!
//! ```text
//! edge-cache --redis redis://127.0.0.1:6379 set gpu_availability '{"gpu_id":"g-42"}' '{"available":true}'
//! edge-cache get gpu_availability '{"gpu_id":"g-42"}'
//! edge-cache notify booking-created --booking b-1 --gpu g-42
//! edge-cache watch
//! ```
//!
//! Exit codes: 0 success (and a hit for `get`), 1 any error (one line on stderr, passwords
//! redacted; usage errors print clap's usage too), 2 a `get` that found nothing.

mod fail;
mod keys;
mod node;
mod notify;
mod render;
mod serve;
mod watch;

use std::process::ExitCode;
use std::time::Duration;

use cache_edge::SetOptions;
use clap::{Args, Parser, Subcommand};
use serde_json::Value;

use crate::fail::{CliError, Outcome};
use crate::node::Target;
use crate::notify::{NotifyFields, Style};

/// What `--help` says after the command list.
const EXIT_CODES: &str = "\
Exit codes:
  0  success (for `get`: a hit, its value printed as JSON on stdout)
  1  error: one line on stderr, `edge-cache: error: ...` (passwords are never printed)
  2  `get` found nothing (`miss` on stderr)";

/// `serve --help`: the line protocol.
const SERVE_HELP: &str = r#"Run an edge node answering one command per line on stdin (a debugging tool).

Prints {"ready":true,"node_id":...} once the node runs, then answers each command with
exactly one JSON line: {"ok":true,...} or {"ok":false,"error":"..."}. Commands:
  get NS PARAMS_JSON                     -> {"ok":true,"hit":true|false,"value":...}
  set NS PARAMS_JSON VALUE_JSON [ttl=SECS] [tag=T]...
  invalidate NS [resource=R] [reason=TEXT]
  notify EVENT [booking=ID] [gpu=ID] [gpu-type=T] [price=P] [provider=ID] [status=S]
         [market=M]                      -> {"ok":true,"value":<the event>}
  stats                                  -> {"ok":true,"value":{counters...}}
  health                                 -> {"ok":true,"value":{"status":...}}
  quit
Empty lines and lines starting with # are skipped. End of input is `quit`.
Operators can run it by hand to watch a node's counters while they poke at the fleet."#;

/// Operator command line for an edge-cache fleet on Redis.
///
/// Every command but `watch` runs an edge node (the seed's six namespaces, Redis as L2, events
/// on the channel) for as long as it takes, so what it writes, invalidates or announces reaches
/// the whole fleet exactly as a node's would.
#[derive(Debug, Parser)]
#[command(name = "edge-cache", version, after_help = EXIT_CODES)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

/// Options every subcommand takes.
#[derive(Debug, Args)]
struct Global {
    /// The Redis URL (help text in the attribute: rustdoc would read its brackets as links).
    #[arg(
        long,
        help = "Redis URL, redis://[user:password@]host:port[/db]; the password is never printed",
        global = true,
        value_name = "URL",
        env = "EDGE_CACHE_REDIS",
        hide_env_values = true,
        default_value = "redis://127.0.0.1:6379"
    )]
    redis: String,

    /// Pub/sub channel of invalidation events.
    #[arg(long, global = true, value_name = "NAME", default_value = cache_redis::DEFAULT_CHANNEL)]
    channel: String,

    /// The node id written on the events this process publishes.
    #[arg(
        long,
        global = true,
        value_name = "ID",
        help = "Node id written on the events this process publishes [default: edge-cache-cli-<pid>]"
    )]
    node_id: Option<String>,

    /// The fleet's event keys, one `<key id>:<hex secret>` per line (what `keygen` prints); the
    /// first signs what this process publishes, all verify. Without it, `EDGE_CACHE_KEYS` may
    /// hold the lines themselves. Never pass a key as an argument: `ps` shows arguments.
    #[arg(long, global = true, value_name = "PATH", env = "EDGE_CACHE_KEYS_FILE")]
    keys_file: Option<std::path::PathBuf>,

    /// With keys, also accept unsigned events (a fleet that still runs seed Python nodes).
    #[arg(long, global = true)]
    accept_unsigned: bool,

    /// Allow a plain-text redis:// URL to a host that is not loopback (the password, events and
    /// values then cross the network readable); prefer rediss://.
    #[arg(long, global = true)]
    allow_plaintext: bool,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Read one entry: L1, then L2 (Redis).
    ///
    /// On a hit, prints the value as one line of JSON on stdout and exits 0. On a miss, prints
    /// `miss` on stderr and exits 2.
    Get {
        /// Namespace (cache type), e.g. gpu_availability.
        namespace: String,
        /// The entry's parameters as JSON, e.g. '{"gpu_id":"g-42"}'.
        #[arg(value_name = "PARAMS_JSON")]
        params: String,
    },

    /// Write one entry to L2 and tell the fleet to drop its copies of that key (no other key).
    Set {
        /// Namespace (cache type), e.g. gpu_availability.
        namespace: String,
        /// The entry's parameters as JSON, e.g. '{"gpu_id":"g-42"}'.
        #[arg(value_name = "PARAMS_JSON")]
        params: String,
        /// The value as JSON, e.g. '{"available":true}'.
        #[arg(value_name = "VALUE_JSON")]
        value: String,
        /// Lifetime in seconds instead of the namespace's TTL.
        #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..))]
        ttl: Option<u64>,
        /// Resource tag, so `invalidate --resource T` removes the entry (repeatable).
        #[arg(long = "tag", value_name = "T")]
        tags: Vec<String>,
    },

    /// Drop a whole namespace, or its entries tagged with one resource, fleet-wide.
    Invalidate {
        /// Namespace (cache type), e.g. gpu_pricing.
        namespace: String,
        /// Only the entries written with this tag (see `set --tag`).
        #[arg(long, value_name = "R")]
        resource: Option<String>,
        /// Why, written on the event (namespace invalidation only).
        #[arg(long, value_name = "TEXT", conflicts_with = "resource")]
        reason: Option<String>,
    },

    /// Announce a marketplace change; the routing table decides which namespaces it drops.
    ///
    /// Event types and the fields each one needs:
    ///   booking-created, booking-cancelled   --booking --gpu
    ///   gpu-availability-changed             --gpu --status
    ///   pricing-updated                      --gpu-type --price
    ///   provider-status-changed              --provider --status
    ///   market-stats-updated                 --market
    ///   order-book-updated                   --market
    /// (`booking_created` and `CacheEventType.BOOKING_CREATED` spellings work too.)
    #[command(
        verbatim_doc_comment,
        about = "Announce a marketplace change; the routing table decides which namespaces it drops"
    )]
    Notify {
        /// The event type, e.g. booking-created.
        event: String,
        #[command(flatten)]
        fields: NotifyFields,
    },

    /// Print every message on the event channel, one line each, until interrupted.
    ///
    /// The first line is `watching <channel> on <url>`. A decoded event prints its type,
    /// resource, source node, namespaces, scope, format version, lag in ms (from its
    /// timestamp to now, so clock skew between hosts shows up too) and data; a message that
    /// does not decode prints `malformed: <error> (<n> bytes)`. Subscription losses print a
    /// `connection:` line: events published while disconnected are lost.
    Watch {
        /// Exit after this many messages.
        #[arg(long, value_name = "N")]
        count: Option<u64>,
    },

    /// Print this node's counters, Redis's figures (used memory, connected clients) and health
    /// as JSON.
    Stats,

    /// Run an edge node answering one command per line on stdin (the protocol is
    /// [`SERVE_HELP`]).
    #[command(
        about = "Run an edge node answering one command per line on stdin (a debugging tool)",
        long_about = SERVE_HELP
    )]
    Serve {
        /// Also serve the node's metrics in Prometheus's text format at http://ADDR/metrics
        /// (e.g. 127.0.0.1:9464; port 0 picks a free one, named in the ready line).
        #[arg(long, value_name = "ADDR")]
        metrics: Option<std::net::SocketAddr>,
    },

    /// Print a new event key line, `<key id>:<64 hex digits>`, from the OS's random source.
    ///
    /// Put it in every node's key file (see --keys-file); the first line of a file signs.
    Keygen {
        /// The key's id, written with every signature (e.g. the month it was made).
        #[arg(long, default_value = "k1")]
        id: String,
    },

    /// Check a captured message (on stdin) against the fleet's keys.
    ///
    /// Prints `signed by <key id>` and exits 0, or exits 1 with the reason it would be refused
    /// (unsigned, malformed signature, unknown key id, bad MAC).
    Verify,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // Help and version go to stdout with success; usage errors exit 1 like any error,
            // keeping 2 for a miss.
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    if let Command::Keygen { id } = &cli.command {
        return match keys::keygen(id) {
            Ok(line) => match fail::print_line(&line) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("edge-cache: error: {e}");
                    ExitCode::FAILURE
                }
            },
            Err(e) => {
                eprintln!("edge-cache: error: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let keys = match keys::load(cli.global.keys_file.as_deref(), cli.global.accept_unsigned) {
        Ok(keys) => keys,
        Err(e) => {
            eprintln!("edge-cache: error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let target = Target {
        keys,
        allow_plaintext: cli.global.allow_plaintext,
        node_id: cli
            .global
            .node_id
            .unwrap_or_else(|| format!("edge-cache-cli-{}", std::process::id())),
        url: cli.global.redis,
        channel: cli.global.channel,
    };
    match run(&target, cli.command).await {
        Ok(Outcome::Done) => ExitCode::SUCCESS,
        Ok(Outcome::Miss) => {
            eprintln!("miss");
            ExitCode::from(2)
        }
        // Whoever read stdout has gone (`edge-cache watch | head -3`): nothing went wrong.
        Err(e) if e.is_stdout_closed() => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("edge-cache: error: {}", e.display_for(&target.url));
            ExitCode::FAILURE
        }
    }
}

async fn run(target: &Target, command: Command) -> Result<Outcome, CliError> {
    let namespaces = node::namespaces();
    match command {
        Command::Get { namespace, params } => {
            node::check_namespace(&namespaces, &namespace)?;
            let params = json_arg("PARAMS_JSON", &params)?;
            let node = node::connect(target).await?;
            let found = node.get::<Value, _>(&namespace, &params).await;
            node.shutdown().await;
            match found? {
                Some(value) => {
                    fail::print_line(&value.to_string())?;
                    Ok(Outcome::Done)
                }
                None => Ok(Outcome::Miss),
            }
        }
        Command::Set {
            namespace,
            params,
            value,
            ttl,
            tags,
        } => {
            node::check_namespace(&namespaces, &namespace)?;
            let params = json_arg("PARAMS_JSON", &params)?;
            let value = json_arg("VALUE_JSON", &value)?;
            let mut options = SetOptions::new().tags(tags);
            if let Some(secs) = ttl {
                options = options.ttl(Duration::from_secs(secs));
            }
            let node = node::connect(target).await?;
            let written = node.set_with(&namespace, &params, &value, options).await;
            node.shutdown().await;
            written?;
            Ok(Outcome::Done)
        }
        Command::Invalidate {
            namespace,
            resource,
            reason,
        } => {
            node::check_namespace(&namespaces, &namespace)?;
            let node = node::connect(target).await?;
            let done = match &resource {
                Some(resource) => node.invalidate_resource(&namespace, resource).await,
                None => {
                    let reason = reason.as_deref().unwrap_or(node::DEFAULT_REASON);
                    node.invalidate_namespace(&namespace, reason).await
                }
            };
            node.shutdown().await;
            done?;
            Ok(Outcome::Done)
        }
        Command::Notify { event, fields } => {
            let notification = notify::notification(&event, &fields, Style::Flags)?;
            let node = node::connect(target).await?;
            let sent = node.notify(notification).await;
            node.shutdown().await;
            sent?;
            Ok(Outcome::Done)
        }
        Command::Watch { count } => watch::run(target, count).await,
        Command::Stats => {
            let node = node::connect(target).await?;
            let report = render::stats_report(target, &node).await;
            node.shutdown().await;
            let text = serde_json::to_string_pretty(&report)
                .map_err(|e| CliError::new(format!("cannot format the report: {e}")))?;
            fail::print_line(&text)?;
            Ok(Outcome::Done)
        }
        Command::Serve { metrics } => {
            let node = node::connect(target).await?;
            serve::run(target, node, namespaces, metrics).await
        }
        Command::Verify => keys::verify(target.keys.as_ref()),
        // Handled before any key is read.
        Command::Keygen { .. } => Ok(Outcome::Done),
    }
}

/// Parses a JSON command-line argument, naming the argument when it is not valid JSON.
fn json_arg(name: &str, text: &str) -> Result<Value, CliError> {
    serde_json::from_str(text).map_err(|e| CliError::new(node::bad_json(name, text, &e)))
}
