//! `cj follow` and `cj consumer ...`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use cj_client::{Follow, FollowLine, FollowOptions, RescanReason, EXIT_COMPLETE, EXIT_ERROR};
use cj_types::escape_path;

use crate::{absolute, connect, say, write_cursor_file};

/// The cursor file is rewritten at most this often while following.
const CURSOR_FILE_INTERVAL: Duration = Duration::from_secs(1);

#[derive(clap::Args)]
pub struct FollowArgs {
    /// Replay every change after this cursor first.
    #[arg(long, value_name = "CURSOR", conflicts_with = "consumer")]
    since: Option<String>,
    /// Follow as this durable consumer: from its acknowledged cursor, in
    /// its scope. (Acknowledge with `cj consumer ack`.)
    #[arg(long, value_name = "NAME")]
    consumer: Option<String>,
    /// Only changes at or below this path.
    path: Option<PathBuf>,
    /// JSON lines, one per record, each with the cursor to resume after it.
    #[arg(long, conflicts_with = "null")]
    json: bool,
    /// Raw paths, each followed by NUL (both names of a rename; a trailing
    /// '/' for entries covering their subtree and for rescan scopes).
    #[arg(short = '0', long = "null")]
    null: bool,
    /// Keep FILE holding the cursor of the last line printed (rewritten
    /// atomically at most once a second, and at the end).
    #[arg(long, value_name = "FILE")]
    cursor_file: Option<PathBuf>,
    /// Exit (status 1) when the daemon goes away instead of reconnecting.
    #[arg(long)]
    no_reconnect: bool,
    /// Ask for a heartbeat line this often when nothing happens (--json
    /// shows them).
    #[arg(long, value_name = "MS", hide = true)]
    heartbeat_ms: Option<u64>,
}

#[derive(clap::Subcommand)]
pub enum ConsumerCommand {
    /// Add a consumer starting now (or at --since), optionally limited to
    /// PATH.
    Add {
        name: String,
        path: Option<PathBuf>,
        #[arg(long, value_name = "CURSOR")]
        since: Option<String>,
    },
    /// List consumers, their cursors and how far behind they are.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Record that NAME has processed everything up to CURSOR.
    Ack { name: String, cursor: String },
    /// Forget a consumer (and stop holding records back for it).
    Remove { name: String },
}

pub fn follow(socket: &Path, a: FollowArgs) -> Result<i32> {
    let options = FollowOptions {
        since: a.since.clone(),
        consumer: a.consumer.clone(),
        path: a.path.as_deref().map(absolute).transpose()?,
        reconnect: !a.no_reconnect,
        heartbeat: a.heartbeat_ms.map(Duration::from_millis),
    };
    let mut stream = Follow::start(socket, options)?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::with_capacity(1 << 16, stdout.lock());
    let mut saved: Option<(String, Instant)> = None;
    loop {
        let item = stream.next();
        if let Some(n) = stream.take_notice() {
            eprintln!("cj: {n}");
        }
        let line = match item {
            Some(Ok(line)) => line,
            Some(Err(e)) => {
                out.flush()?;
                save_cursor(a.cursor_file.as_deref(), stream.cursor(), &mut saved, true)?;
                let resume = stream
                    .cursor()
                    .map(|c| format!("; resume with `cj follow --since {c}`"))
                    .unwrap_or_default();
                eprintln!("cj: {e}{resume}");
                return Ok(EXIT_ERROR);
            }
            None => break,
        };
        print_line(&mut out, &line, &a)?;
        if !stream.pending() {
            out.flush().context("cannot write the output")?;
            save_cursor(a.cursor_file.as_deref(), stream.cursor(), &mut saved, false)?;
        }
    }
    out.flush()?;
    Ok(EXIT_COMPLETE)
}

fn save_cursor(
    file: Option<&Path>,
    cursor: Option<&str>,
    saved: &mut Option<(String, Instant)>,
    now: bool,
) -> Result<()> {
    let (Some(file), Some(cursor)) = (file, cursor) else {
        return Ok(());
    };
    let due = match saved {
        Some((c, at)) => c != cursor && (now || at.elapsed() >= CURSOR_FILE_INTERVAL),
        None => true,
    };
    if due {
        write_cursor_file(file, cursor)?;
        *saved = Some((cursor.to_string(), Instant::now()));
    }
    Ok(())
}

fn print_line(out: &mut impl Write, line: &FollowLine, a: &FollowArgs) -> Result<()> {
    if a.json {
        if !matches!(line, FollowLine::Heartbeat { .. }) || a.heartbeat_ms.is_some() {
            writeln!(out, "{}", serde_json::Value::Object(line.to_json()))?;
        }
        return Ok(());
    }
    if a.null {
        return print_null(out, line);
    }
    match line {
        FollowLine::Change { change: e, .. } => {
            let changes: Vec<&str> = e.changes.iter().map(|c| c.as_str()).collect();
            write!(
                out,
                "{}\t{}\t{}",
                changes.join(","),
                e.kind.as_str(),
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
        FollowLine::Rescan { scopes, .. } => {
            for r in scopes {
                writeln!(
                    out,
                    "rescan\t{}\t{}",
                    RescanReason::join(&r.reasons),
                    escape_path(&r.path)
                )?;
            }
        }
        FollowLine::Resolved { scopes, .. } => {
            for p in scopes {
                writeln!(out, "resolved\t{}", escape_path(p))?;
            }
        }
        FollowLine::HistoryDone { cursor } => writeln!(out, "history_done\t{cursor}")?,
        _ => {}
    }
    Ok(())
}

fn print_null(out: &mut impl Write, line: &FollowLine) -> Result<()> {
    let mut put = |p: &[u8], dir: bool| -> std::io::Result<()> {
        out.write_all(p)?;
        if dir && !p.ends_with(b"/") {
            out.write_all(b"/")?;
        }
        out.write_all(b"\0")
    };
    match line {
        FollowLine::Change { change: e, .. } => {
            if let Some(f) = &e.renamed_from {
                put(f, e.subtree)?;
            }
            put(&e.path, e.subtree)?;
            if let Some(t) = &e.renamed_to {
                put(t, e.subtree)?;
            }
        }
        FollowLine::Rescan { scopes, .. } => {
            for r in scopes {
                put(&r.path, true)?;
            }
        }
        _ => {}
    }
    Ok(())
}

pub fn consumer(socket: &Path, c: ConsumerCommand) -> Result<i32> {
    let mut client = connect(socket)?;
    match c {
        ConsumerCommand::Add { name, path, since } => {
            let path = path.as_deref().map(absolute).transpose()?;
            let at = client.consumer_add(&name, path.as_deref(), since.as_deref())?;
            say(format_args!("consumer {name} added at {at}"))?;
        }
        ConsumerCommand::Ack { name, cursor } => {
            if let Err(e) = cj_types::Cursor::parse(&cursor) {
                bail!("{e}");
            }
            client.consumer_ack(&name, &cursor)?;
        }
        ConsumerCommand::Remove { name } => {
            client.consumer_remove(&name)?;
            say(format_args!("consumer {name} removed"))?;
        }
        ConsumerCommand::List { json } => {
            let m = client.consumers()?;
            if json {
                say(format_args!("{}", serde_json::Value::Object(m)))?;
            } else {
                list_text(&serde_json::Value::Object(m))?;
            }
        }
    }
    Ok(EXIT_COMPLETE)
}

fn list_text(m: &serde_json::Value) -> Result<()> {
    let list = m["consumers"].as_array().cloned().unwrap_or_default();
    if list.is_empty() {
        say(format_args!(
            "no consumers (add one with `cj consumer add NAME [PATH]`)"
        ))?;
    }
    for c in list {
        let scope = c
            .as_object()
            .and_then(|o| cj_types::protocol::get_path(o, "path").ok().flatten())
            .map(|p| escape_path(&p))
            .unwrap_or_else(|| "every root".into());
        let state = if c["expired"].as_bool() == Some(true) {
            "EXPIRED (records it had not acknowledged were dropped; its next answer asks for a rescan)"
        } else if c["idle"].as_bool() == Some(true) {
            "idle (not holding records back)"
        } else {
            "holding records back"
        };
        say(format_args!(
            "{}\t{}\t{}\t{}\t{}{}",
            c["name"].as_str().unwrap_or("?"),
            scope,
            lag_text(&c),
            state,
            c["cursor"].as_str().unwrap_or(""),
            note_text(&c)
        ))?;
    }
    say(format_args!(
        "records are held for consumers until the journal reaches {} MiB",
        m["cap_bytes"].as_u64().unwrap_or(0) >> 20
    ))
}

/// "N records (S s) behind" for a consumer of `consumer_list` or `status`.
pub fn lag_text(c: &serde_json::Value) -> String {
    let n = c["lag_records"].as_u64().unwrap_or(0);
    if n == 0 {
        return "up to date".into();
    }
    format!(
        "{n} records ({:.1} s) behind",
        c["lag_s"].as_f64().unwrap_or(0.0)
    )
}

/// "\tnote: TEXT (for S s)" when the consumer left a note.
pub fn note_text(c: &serde_json::Value) -> String {
    let Some(text) = c["note"].as_str() else {
        return String::new();
    };
    let since = c["note_since_ns"].as_u64().unwrap_or(0);
    let age = cj_types::sys::now_ns().saturating_sub(since) / 1_000_000_000;
    format!("\tnote: {text} (for {age} s)")
}
