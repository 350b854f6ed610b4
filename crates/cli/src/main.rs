//! `cj`: a thin binary over the library crates. main -> run -> one function
//! per subcommand.

use std::ffi::OsString;
use std::io::Write;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Component, Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use cj_client::{Client, EXIT_COMPLETE, EXIT_ERROR, EXIT_INCOMPLETE};
use cj_types::{escape_path, Cursor};
use clap::{Parser, Subcommand};

mod export;
mod git;
mod stream;
mod watchman;

#[derive(Parser)]
#[command(
    name = "cj",
    version,
    about = "A persistent change journal for Linux filesystems"
)]
struct Cli {
    /// The daemon's socket [env: CJ_SOCKET] [default: /run/cj/cj.sock]
    #[arg(long, global = true, value_name = "PATH")]
    socket: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args)]
struct DaemonArgs {
    /// Read the settings from FILE (TOML; docs/configuration.md). Default:
    /// /etc/cj/cj.toml when it exists. Flags override the file; SIGHUP
    /// reads it again.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Where the journal and tracked roots are kept [default: /var/lib/cj]
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Journal size budget in MiB; oldest segments are deleted past it
    /// [default: 2048]
    #[arg(long, value_name = "MIB")]
    retain_mib: Option<u64>,
    /// Journal age budget in days [default: 30]
    #[arg(long, value_name = "DAYS")]
    retain_days: Option<u64>,
    /// Longest time a captured change waits for its fdatasync when no
    /// client is waiting. Larger values cost less I/O on busy systems
    /// [default: 100]
    #[arg(long, value_name = "MS")]
    commit_interval_ms: Option<u64>,
    /// How gaps are reconciled: `auto` uses the XFS bulkstat and btrfs
    /// tree-search fast paths where they are safe and walks elsewhere;
    /// `walk` always walks and compares every entry [default: auto]
    #[arg(long, value_name = "METHOD", value_parser = ["auto", "walk"])]
    reconcile: Option<String>,
    /// Bring idle baselines up to date this often (looking again at the
    /// paths the journal names, journaling nothing), so that a later gap
    /// re-reports fewer already journaled changes. 0 turns it off
    /// [default: 600]
    #[arg(long, value_name = "SECS")]
    baseline_refresh_secs: Option<u64>,
    /// Durable consumers hold records past --retain-mib/--retain-days until
    /// the journal reaches this size; then the oldest go anyway and those
    /// consumers are told `cursor_expired` [default: 8192]
    #[arg(long, value_name = "MIB")]
    consumer_cap_mib: Option<u64>,
    /// A durable consumer not used (ack, follow, changes) for this many days
    /// stops holding records back. 0: never [default: 30]
    #[arg(long, value_name = "DAYS")]
    consumer_idle_days: Option<u64>,
    /// A follower that takes no byte for this long is cut off (it is told
    /// so, and resumes from its cursor) [default: 30000]
    #[arg(long, value_name = "MS")]
    follow_stall_ms: Option<u64>,
    /// Also speak the Watchman protocol on this socket (point WATCHMAN_SOCK
    /// at it; docs/watchman.md)
    #[arg(long, value_name = "PATH")]
    watchman_socket: Option<PathBuf>,
    /// Testing only: use the kernel's bounded event queue so that
    /// overflows can be forced.
    #[arg(long, hide = true)]
    test_bounded_queue: bool,
    /// Testing only: journal segment size in bytes.
    #[arg(long, hide = true)]
    test_segment_bytes: Option<u64>,
    /// Testing only: the size budget and consumer cap in bytes.
    #[arg(long, hide = true)]
    test_retain_bytes: Option<u64>,
    #[arg(long, hide = true)]
    test_consumer_cap_bytes: Option<u64>,
    /// Testing only: a reconciliation of a gap waits this long first.
    #[arg(long, hide = true)]
    test_reconcile_delay_ms: Option<u64>,
    /// Testing only: walks sort runs of this many bytes and spill them all
    /// (design 11.4), however small the tree.
    #[arg(long, hide = true)]
    test_spill_bytes: Option<usize>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon in the foreground (as root).
    Daemon(DaemonArgs),
    /// Start tracking the tree under DIR (persists across restarts).
    Track { dir: PathBuf },
    /// Stop tracking the tree under DIR.
    Untrack { dir: PathBuf },
    /// Show roots, journal range, disk use and commit lag.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Print a cursor that covers every change made before this command.
    Cursor { path: Option<PathBuf> },
    /// Print the changes since CURSOR, then the new cursor.
    ///
    /// Exit status 0: the answer is complete. 3: it cannot be complete (the
    /// cursor is unknown, foreign or expired, or history has a gap); the
    /// output names the directories to rescan and why.
    Changes {
        /// A cursor from `cj cursor` or an earlier `cj changes`.
        #[arg(long, value_name = "CURSOR", required_unless_present = "consumer")]
        since: Option<String>,
        /// Start after this durable consumer's acknowledged cursor, in its
        /// scope (acknowledge with `cj consumer ack`, or use --ack).
        #[arg(long, value_name = "NAME", conflicts_with = "since")]
        consumer: Option<String>,
        /// With --consumer: acknowledge the answer's cursor once it is
        /// printed (only when the answer is complete).
        #[arg(long, requires = "consumer")]
        ack: bool,
        /// Only changes at or below this path.
        path: Option<PathBuf>,
        /// JSON lines: one object per path, then {"cursor": ...}.
        #[arg(long, conflicts_with = "null")]
        json: bool,
        /// Raw paths separated by NUL; the first item is the new cursor.
        /// Rescan scopes are listed with a trailing '/'.
        #[arg(short = '0', long = "null")]
        null: bool,
        /// Also write the new cursor to FILE (replaced atomically).
        #[arg(long, value_name = "FILE")]
        cursor_file: Option<PathBuf>,
        /// Wait up to SECS (default 300) for reconciliation to close gaps in
        /// the range (after a restart, crash or overflow) before answering.
        #[arg(long, value_name = "SECS", num_args = 0..=1, default_missing_value = "300")]
        wait: Option<u64>,
    },
    /// Print changes as they become durable: first those since CURSOR (or
    /// the consumer's cursor), then a `history_done` marker, then live.
    ///
    /// Reconnects and resumes when the daemon restarts. Runs until
    /// interrupted.
    Follow(stream::FollowArgs),
    /// Durable consumers: named places in the journal that survive
    /// restarts and hold back retention until acknowledged.
    #[command(subcommand)]
    Consumer(stream::ConsumerCommand),
    /// Publish the journal to an existing distributed log (NATS
    /// JetStream), as a durable consumer: docs/export.md.
    #[command(subcommand)]
    Export(export::ExportCommand),
    /// Git's fsmonitor hook (protocol version 2): run by git as
    /// `HOOK 2 TOKEN` from the worktree; prints a new token, NUL, then the
    /// paths that changed since TOKEN (or `/` when git must look at
    /// everything). Set up with `cj git-setup`.
    GitFsmonitor {
        /// The hook protocol version git speaks (only 2 is supported).
        version: String,
        /// The token of git's last query (a cj cursor).
        #[arg(default_value = "")]
        token: String,
    },
    /// Make `git status` in REPO (default: here) ask cj what changed:
    /// tracks the worktree if needed (as root) and sets core.fsmonitor.
    GitSetup {
        repo: Option<PathBuf>,
        /// Take the setting away again.
        #[arg(long)]
        undo: bool,
    },
    /// Print the manual page (roff) or shell completions, generated from
    /// this command's own definition (scripts/install installs them).
    Generate {
        #[arg(value_parser = ["man", "bash", "zsh", "fish"])]
        what: String,
    },
    /// Show reconciliation progress; with --wait, follow it until idle.
    Reconcile {
        #[arg(long)]
        wait: bool,
    },
}

fn main() -> ExitCode {
    // Run as `watchman` (a symlink): a Watchman client (docs/watchman.md).
    let args: Vec<String> = std::env::args().collect();
    let name = args
        .first()
        .map(|a| a.rsplit('/').next().unwrap_or(a).to_string())
        .unwrap_or_default();
    if name == "watchman" {
        return ExitCode::from(watchman::main(args) as u8);
    }
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => ExitCode::from(code as u8),
        Err(e) => {
            if is_broken_pipe(&e) {
                return ExitCode::from(EXIT_COMPLETE as u8);
            }
            eprintln!("cj: {e:#}");
            ExitCode::from(EXIT_ERROR as u8)
        }
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

fn run(cli: Cli) -> Result<i32> {
    let socket = cli.socket.clone().unwrap_or_else(cj_client::socket_path);
    match cli.command {
        Command::Daemon(args) => daemon(cli.socket.clone(), args),
        Command::Track { dir } => track(&socket, &dir, true),
        Command::Untrack { dir } => track(&socket, &dir, false),
        Command::Status { json } => status(&socket, json),
        Command::Cursor { path } => cursor(&socket, path.as_deref()),
        Command::Changes {
            since,
            consumer,
            ack,
            path,
            json,
            null,
            cursor_file,
            wait,
        } => {
            let from = match (&since, &consumer) {
                (_, Some(name)) => cj_client::Since::Consumer(name),
                (Some(c), None) => cj_client::Since::Cursor(c),
                (None, None) => bail!("give --since CURSOR or --consumer NAME"),
            };
            changes(
                &socket,
                from,
                path.as_deref(),
                Output { json, null },
                cursor_file.as_deref(),
                wait.map(std::time::Duration::from_secs),
                ack,
            )
        }
        Command::Follow(args) => stream::follow(&socket, args),
        Command::Consumer(c) => stream::consumer(&socket, c),
        Command::Reconcile { wait } => reconcile(&socket, wait),
        Command::Export(c) => {
            init_logging();
            export::run(&socket, c)
        }
        Command::Generate { what } => generate(&what),
        Command::GitFsmonitor { version, token } => git::fsmonitor(&socket, &version, &token),
        Command::GitSetup { repo, undo } => {
            let explicit = cli.socket.is_some() || std::env::var_os("CJ_SOCKET").is_some();
            git::setup(&socket, explicit, repo.as_deref(), undo)
        }
    }
}

fn generate(what: &str) -> Result<i32> {
    use clap::CommandFactory;
    let mut cmd = Cli::command();
    let mut out = std::io::stdout().lock();
    match what {
        "man" => clap_mangen::Man::new(cmd)
            .render(&mut out)
            .context("writing the manual page")?,
        shell => {
            let shell = match shell {
                "bash" => clap_complete::Shell::Bash,
                "zsh" => clap_complete::Shell::Zsh,
                _ => clap_complete::Shell::Fish,
            };
            clap_complete::generate(shell, &mut cmd, "cj", &mut out);
        }
    }
    out.flush().context("cannot write the output")?;
    Ok(EXIT_COMPLETE)
}

fn daemon(socket: Option<PathBuf>, a: DaemonArgs) -> Result<i32> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the daemon must run as root (fanotify filesystem marks need CAP_SYS_ADMIN)");
    }
    use cj_service::config_file::{Settings, DEFAULT_CONFIG};
    let flags = Settings {
        state_dir: a.state_dir,
        socket: socket.or_else(|| std::env::var_os("CJ_SOCKET").map(PathBuf::from)),
        watchman_socket: a.watchman_socket,
        retain_mib: a.retain_mib,
        retain_days: a.retain_days,
        commit_interval_ms: a.commit_interval_ms,
        reconcile: a.reconcile,
        baseline_refresh_secs: a.baseline_refresh_secs,
        consumer_cap_mib: a.consumer_cap_mib,
        consumer_idle_days: a.consumer_idle_days,
        follow_stall_ms: a.follow_stall_ms,
        grants: Vec::new(),
        export: None,
    };
    // An explicit --config must exist; the default one is used if present.
    let file = a.config.or_else(|| {
        let d = PathBuf::from(DEFAULT_CONFIG);
        d.exists().then_some(d)
    });
    let settings = match &file {
        Some(f) => Settings::load(f)?.overridden_by(&flags),
        None => flags.clone(),
    };
    if let Some(n) = settings.export.as_ref().and_then(|e| e.nats.clone()) {
        let socket = settings
            .socket
            .clone()
            .unwrap_or_else(|| PathBuf::from(cj_service::DEFAULT_SOCKET));
        export::in_daemon(socket, n)?;
    }
    let mut config = settings.to_config();
    config.reload = file.map(|file| cj_service::config::Reload { file, flags });
    if a.test_bounded_queue {
        config.queue = cj_capture::QueueLimit::KernelDefault;
    }
    if let Some(b) = a.test_segment_bytes {
        config.journal.segment_bytes = b;
    }
    if let Some(b) = a.test_retain_bytes {
        config.journal.retain_bytes = b;
    }
    if let Some(b) = a.test_consumer_cap_bytes {
        config.journal.pinned_cap_bytes = b;
    }
    if let Some(ms) = a.test_reconcile_delay_ms {
        config.test_reconcile_delay = std::time::Duration::from_millis(ms);
    }
    config.test_spill_bytes = a.test_spill_bytes;
    init_logging();
    cj_service::run(config)?;
    Ok(EXIT_COMPLETE)
}

/// The daemon's log: one line per event on stderr, without a time (the
/// journal or the terminal has one). Under systemd (`JOURNAL_STREAM` set)
/// each line starts with its syslog priority (`<4>` warning, `<6>` info),
/// which the journal reads.
fn init_logging() {
    use tracing_subscriber::fmt::{format::Writer, FmtContext, FormatEvent, FormatFields};
    use tracing_subscriber::registry::LookupSpan;
    struct Lines {
        journal: bool,
    }
    impl<S, N> FormatEvent<S, N> for Lines
    where
        S: tracing::Subscriber + for<'a> LookupSpan<'a>,
        N: for<'a> FormatFields<'a> + 'static,
    {
        fn format_event(
            &self,
            ctx: &FmtContext<'_, S, N>,
            mut w: Writer<'_>,
            event: &tracing::Event<'_>,
        ) -> std::fmt::Result {
            if self.journal {
                let prio = match *event.metadata().level() {
                    tracing::Level::ERROR => 3,
                    tracing::Level::WARN => 4,
                    tracing::Level::INFO => 6,
                    _ => 7,
                };
                write!(w, "<{prio}>")?;
            }
            ctx.field_format().format_fields(w.by_ref(), event)?;
            writeln!(w)
        }
    }
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .event_format(Lines {
            journal: std::env::var_os("JOURNAL_STREAM").is_some(),
        })
        .try_init();
}

/// An absolute, normalised path without resolving symlinks in the last part
/// when it does not exist (so a deleted directory can still be asked about).
pub(crate) fn absolute(path: &Path) -> Result<Vec<u8>> {
    if let Ok(p) = std::fs::canonicalize(path) {
        return Ok(p.into_os_string().into_vec());
    }
    let joined = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()
            .context("reading the current directory")?
            .join(path)
    };
    let mut out = PathBuf::from("/");
    for c in joined.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(n) => out.push(n),
            _ => {}
        }
    }
    Ok(out.into_os_string().into_vec())
}

/// Prints one line on stdout. Unlike `println!`, a full disk or a closed
/// pipe is an error the caller reports (issue 9, defect 9), never a panic.
pub(crate) fn say(line: std::fmt::Arguments<'_>) -> Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")
        .and_then(|()| out.flush())
        .context("cannot write the output")
}

pub(crate) fn connect(socket: &Path) -> Result<Client> {
    Ok(Client::connect(socket)?)
}

fn track(socket: &Path, dir: &Path, add: bool) -> Result<i32> {
    if add {
        match std::fs::metadata(dir) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => bail!("{} is not a directory", dir.display()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                bail!("{} does not exist", dir.display())
            }
            Err(e) => bail!("cannot look at {}: {e}", dir.display()),
        }
    }
    let path = absolute(dir)?;
    let mut client = connect(socket)?;
    if add {
        client.track(&path)?;
        say(format_args!("tracking {}", escape_path(&path)))?;
    } else {
        client.untrack(&path)?;
        say(format_args!("no longer tracking {}", escape_path(&path)))?;
    }
    Ok(EXIT_COMPLETE)
}

fn status(socket: &Path, json: bool) -> Result<i32> {
    let mut client = connect(socket)?;
    let s = serde_json::Value::Object(client.status()?);
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{s}")?;
    } else {
        status_daemon(&mut out, &s)?;
        status_reconcile(&mut out, &s["reconcile"])?;
        status_gaps(&mut out, &s["gaps"])?;
        status_roots(&mut out, &s["roots"])?;
    }
    out.flush()?;
    Ok(EXIT_COMPLETE)
}

fn status_daemon(out: &mut impl Write, s: &serde_json::Value) -> Result<()> {
    writeln!(
        out,
        "daemon      pid {} up {}s, socket {}",
        s["pid"],
        s["uptime_s"],
        s["socket"].as_str().unwrap_or("")
    )?;
    let j = &s["journal"];
    writeln!(
        out,
        "journal     {} seq {}..{} ({} segments, {} bytes)",
        j["id"].as_str().unwrap_or(""),
        j["first_seq"],
        j["last_seq"],
        j["segments"],
        j["disk_bytes"]
    )?;
    if let Some(problem) = j["problem"].as_str() {
        writeln!(out, "            STOPPED: {problem}")?;
    }
    let k = &s["consumers"];
    if k["count"].as_u64().unwrap_or(0) > 0 {
        let expired: Vec<&str> = k["expired"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|n| n.as_str())
            .collect();
        writeln!(
            out,
            "consumers   {}{}, records held until the journal reaches {} MiB{}",
            k["count"],
            k["pin_seq"]
                .as_u64()
                .map(|p| format!(" (holding records after seq {p})"))
                .unwrap_or_default(),
            k["cap_bytes"].as_u64().unwrap_or(0) >> 20,
            if expired.is_empty() {
                String::new()
            } else {
                format!("; EXPIRED: {}", expired.join(", "))
            }
        )?;
        for c in k["list"].as_array().into_iter().flatten() {
            writeln!(
                out,
                "            {}: {}{}",
                c["name"].as_str().unwrap_or("?"),
                stream::lag_text(c),
                stream::note_text(c).replace('\t', "; ")
            )?;
        }
    }
    let c = &s["commit"];
    writeln!(
        out,
        "commit lag  p50 {} us, p99 {} us, max {} us over the last commits",
        c["latency_us_p50"], c["latency_us_p99"], c["latency_us_max"]
    )?;
    let c = &s["capture"];
    writeln!(
        out,
        "capture     {} events -> {} records; {} outside roots, {} unresolved, {} overflows",
        c["events"],
        c["records"],
        c["dropped_outside_roots"],
        c["unresolved_objects"],
        c["overflows"]
    )?;
    Ok(())
}

fn status_reconcile(out: &mut impl Write, r: &serde_json::Value) -> Result<()> {
    writeln!(
        out,
        "reconcile   {}, {} passes, {} reconciled records, last by {} in {} ms{}",
        if r["busy"].as_bool().unwrap_or(false) {
            "busy"
        } else {
            "idle"
        },
        r["walks"],
        r["reconciled_records"],
        r["last_method"].as_str().unwrap_or("-"),
        r["last_resolve_ms"],
        r["last_error"]
            .as_str()
            .map(|e| format!(", last error: {e}"))
            .unwrap_or_default()
    )?;
    let retry = &r["retry"];
    if let Some(root) = retry["root"].as_str() {
        writeln!(
            out,
            "            failed {} time(s) for {root}; retrying in {} s",
            retry["attempts"],
            retry["in_ms"].as_u64().unwrap_or(0).div_ceil(1000)
        )?;
    }
    Ok(())
}

/// A byte path from a status object (`F` or `F_b64`), escaped for text.
fn status_path(obj: &serde_json::Value, stem: &str) -> Option<String> {
    let obj = obj.as_object()?;
    let p = cj_types::protocol::get_path(obj, stem).ok().flatten()?;
    Some(escape_path(&p))
}

fn status_gaps(out: &mut impl Write, gaps: &serde_json::Value) -> Result<()> {
    for (i, gap) in gaps.as_array().into_iter().flatten().enumerate() {
        let scope = status_path(gap, "scope")
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| "every root".into());
        let resolved: Vec<String> = gap["resolved_for"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|o| status_path(o, "path"))
            .collect();
        writeln!(
            out,
            "{}seq {} {} ({scope}): {}",
            if i == 0 {
                "gaps        "
            } else {
                "            "
            },
            gap["seq"],
            gap["reason"].as_str().unwrap_or("?"),
            if resolved.is_empty() {
                "open".to_string()
            } else {
                format!("resolved for {}", resolved.join(", "))
            }
        )?;
    }
    Ok(())
}

fn status_roots(out: &mut impl Write, roots: &serde_json::Value) -> Result<()> {
    let roots = roots.as_array().cloned().unwrap_or_default();
    if roots.is_empty() {
        writeln!(out, "roots       none (add one with `cj track DIR`)")?;
    }
    for r in roots {
        let path = status_path(&r, "path").unwrap_or_default();
        let fs = r["filesystem"].as_str().unwrap_or("?");
        let state = match r["problem"].as_str() {
            Some(p) => format!("NOT CAPTURED: {p}"),
            None => "captured".into(),
        };
        writeln!(out, "root        {path} ({fs}) {state}")?;
    }
    Ok(())
}

fn cursor(socket: &Path, path: Option<&Path>) -> Result<i32> {
    let path = path.map(absolute).transpose()?;
    let mut client = connect(socket)?;
    let c = client.cursor(path.as_deref())?;
    say(format_args!("{c}"))?;
    Ok(EXIT_COMPLETE)
}

pub(crate) fn write_cursor_file(file: &Path, cursor: &str) -> Result<()> {
    let tmp = {
        let mut name = OsString::from(file.as_os_str());
        name.push(".tmp");
        PathBuf::from(name)
    };
    std::fs::write(&tmp, format!("{cursor}\n"))
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, file).with_context(|| format!("renaming to {}", file.display()))?;
    Ok(())
}

struct Output {
    json: bool,
    null: bool,
}

/// A text progress bar `[=====>    ]` of `width` cells.
fn bar(done: u64, total: u64, width: usize) -> String {
    let filled = if total == 0 {
        0
    } else {
        ((done.min(total) as u128 * width as u128) / total as u128) as usize
    };
    let mut s = String::with_capacity(width + 2);
    s.push('[');
    for i in 0..width {
        s.push(if i < filled {
            '='
        } else if i == filled {
            '>'
        } else {
            ' '
        });
    }
    s.push(']');
    s
}

fn reconcile(socket: &Path, wait: bool) -> Result<i32> {
    let mut client = connect(socket)?;
    let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
    loop {
        let s = client.status()?;
        let r = s.get("reconcile").cloned().unwrap_or_default();
        let busy = r["busy"].as_bool().unwrap_or(false);
        let walking = r
            .as_object()
            .and_then(|o| cj_types::protocol::get_path(o, "walking").ok().flatten())
            .map(|p| escape_path(&p));
        let entries = r["entries_walked"].as_u64().unwrap_or(0);
        let expected = r["expected_entries"].as_u64().unwrap_or(0);
        let line = match (&walking, busy) {
            (Some(root), true) => {
                let phase = r["phase"].as_str().unwrap_or("working");
                let progress = if phase == "walking" && expected > 0 {
                    format!(
                        "{} {:>3}% ",
                        bar(entries, expected, 30),
                        (entries.min(expected) * 100) / expected
                    )
                } else {
                    String::new()
                };
                format!(
                    "reconcile: {root}: {phase} {progress}({entries} entries, {} directories), {} queued",
                    r["directories_walked"], r["pending_requests"]
                )
            }
            _ => format!(
                "reconcile: {}; {} passes, {} reconciled records; last: {} in {} ms{}",
                if busy { "starting" } else { "idle" },
                r["walks"],
                r["reconciled_records"],
                r["last_method"].as_str().unwrap_or("-"),
                r["last_resolve_ms"],
                r["last_walk_reason"]
                    .as_str()
                    .map(|w| format!(" (walked: {w})"))
                    .unwrap_or_default()
            ),
        };
        if !wait || !busy {
            if wait && tty {
                eprint!("\r\x1b[K");
            }
            eprintln!("{line}");
            if let Some(e) = r["last_error"].as_str() {
                eprintln!("reconcile: last error: {e}");
            }
            return Ok(EXIT_COMPLETE);
        }
        if tty {
            eprint!("\r{line}\x1b[K");
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

// long: one answer in three output formats
fn changes(
    socket: &Path,
    from: cj_client::Since<'_>,
    path: Option<&Path>,
    output: Output,
    cursor_file: Option<&Path>,
    wait: Option<std::time::Duration>,
    ack: bool,
) -> Result<i32> {
    let Output { json, null } = output;
    if let cj_client::Since::Cursor(since) = from {
        if let Err(e) = Cursor::parse(since) {
            eprintln!("cj: {e}; answering with a rescan of the whole scope");
        }
    }
    let path = path.map(absolute).transpose()?;
    let mut client = connect(socket)?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut entries = Vec::new();
    let mut io_error: Option<std::io::Error> = None;
    let last = if json {
        client.changes_raw(from, path.as_deref(), wait, |m| {
            if let Err(e) = writeln!(out, "{}", serde_json::Value::Object(m.clone())) {
                io_error.get_or_insert(e);
            }
            Ok(())
        })?
    } else {
        client.changes_each(from, path.as_deref(), wait, |c| {
            entries.push(c);
            Ok(())
        })?
    };
    if let Some(e) = io_error {
        return Err(e.into());
    }
    let answer = cj_client::parse_final(&last, entries)?;
    if json {
        writeln!(out, "{}", serde_json::Value::Object(last))?;
    } else if null {
        out.write_all(answer.cursor.as_bytes())?;
        out.write_all(b"\0")?;
        for e in &answer.entries {
            out.write_all(&e.path)?;
            // A trailing slash: everything below may have changed.
            if e.subtree && !e.path.ends_with(b"/") {
                out.write_all(b"/")?;
            }
            out.write_all(b"\0")?;
        }
        for r in &answer.rescan {
            out.write_all(&r.path)?;
            if !r.path.ends_with(b"/") {
                out.write_all(b"/")?;
            }
            out.write_all(b"\0")?;
        }
    } else {
        for e in &answer.entries {
            let state = if e.exists { "exists" } else { "gone" };
            write!(
                out,
                "{}\t{}\t{}\t{}",
                e.changes
                    .iter()
                    .map(|c| c.as_str())
                    .collect::<Vec<_>>()
                    .join(","),
                e.kind.as_str(),
                state,
                escape_path(&e.path)
            )?;
            if let Some(f) = &e.renamed_from {
                write!(out, "\tfrom {}", escape_path(f))?;
            }
            if let Some(t) = &e.renamed_to {
                write!(out, "\tto {}", escape_path(t))?;
            }
            if e.subtree {
                write!(out, "\tsubtree")?;
            }
            writeln!(out)?;
        }
        for r in &answer.rescan {
            writeln!(
                out,
                "rescan\t{}\t{}",
                cj_client::RescanReason::join(&r.reasons),
                escape_path(&r.path)
            )?;
        }
        writeln!(out, "cursor\t{}", answer.cursor)?;
    }
    out.flush()?;
    if let Some(f) = cursor_file {
        write_cursor_file(f, &answer.cursor)?;
    }
    if answer.complete {
        if let (true, cj_client::Since::Consumer(name)) = (ack, from) {
            client.consumer_ack(name, &answer.cursor)?;
        }
        return Ok(EXIT_COMPLETE);
    }
    for r in &answer.rescan {
        eprintln!(
            "cj: incomplete answer: rescan {} ({})",
            String::from_utf8_lossy(
                Path::new(std::ffi::OsStr::from_bytes(&r.path))
                    .as_os_str()
                    .as_bytes()
            ),
            cj_client::RescanReason::join(&r.reasons)
        );
    }
    Ok(EXIT_INCOMPLETE)
}
