//! `watchman`: when the `cj` binary runs under that name (a symlink first
//! on `PATH`), it is a Watchman command-line client for cj's Watchman
//! endpoint, enough for the tools that run `watchman` themselves
//! (jest-haste-map runs `watchman --version` and `watchman get-sockname`).
//!
//! `watchman [--sockname=PATH] [--no-pretty] [-j] [-p] COMMAND [ARGS...]`:
//! the socket is `--sockname`, else `WATCHMAN_SOCK`, else
//! `/run/cj/watchman.sock`. `-j` reads the command (a JSON array) from
//! standard input; `-p` keeps printing unilateral answers (subscriptions).

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;

/// Where the daemon's Watchman endpoint listens unless told otherwise.
pub const DEFAULT_WATCHMAN_SOCKET: &str = "/run/cj/watchman.sock";

pub fn main(args: Vec<String>) -> i32 {
    match run(args) {
        Ok(code) => code,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "watchman (cj): {e}");
            1
        }
    }
}

fn run(args: Vec<String>) -> Result<i32, String> {
    let mut sock = std::env::var("WATCHMAN_SOCK").ok();
    let mut pretty = true;
    let mut stdin_json = false;
    let mut persistent = false;
    let mut rest = Vec::new();
    let mut it = args.into_iter().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "-v" | "--version" if rest.is_empty() => {
                println!("{}", cj_service::watchman::VERSION);
                return Ok(0);
            }
            "--no-pretty" if rest.is_empty() => pretty = false,
            "-j" | "--json-command" if rest.is_empty() => stdin_json = true,
            "-p" | "--persistent" if rest.is_empty() => persistent = true,
            "--no-spawn" | "--no-local" | "--no-save-state" if rest.is_empty() => {}
            "-U" | "--sockname" | "-o" | "--logfile" | "--log-level" | "--server-encoding"
            | "--output-encoding"
                if rest.is_empty() =>
            {
                let v = it.next().ok_or(format!("{a} needs a value"))?;
                if a == "-U" || a == "--sockname" {
                    sock = Some(v);
                }
            }
            s if rest.is_empty() && s.starts_with("--sockname=") => {
                sock = Some(s["--sockname=".len()..].to_string());
            }
            s if rest.is_empty() && s.starts_with("--") && s.contains('=') => {}
            _ => rest.push(a),
        }
    }
    let command: serde_json::Value = if stdin_json {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|e| e.to_string())?;
        serde_json::from_str(&text).map_err(|e| format!("the command on stdin is not JSON: {e}"))?
    } else if rest.is_empty() {
        return Err("no command given (try `watchman version`)".into());
    } else {
        serde_json::Value::Array(rest.into_iter().map(serde_json::Value::String).collect())
    };
    let sock = sock.unwrap_or_else(|| DEFAULT_WATCHMAN_SOCKET.to_string());
    let stream = UnixStream::connect(&sock).map_err(|e| {
        format!(
            "cannot connect to cj's Watchman endpoint at {sock}: {e}; start the daemon with \
             --watchman-socket {sock} (or set WATCHMAN_SOCK)"
        )
    })?;
    let mut w = stream.try_clone().map_err(|e| e.to_string())?;
    let mut line = serde_json::to_vec(&command).map_err(|e| e.to_string())?;
    line.push(b'\n');
    w.write_all(&line).map_err(|e| e.to_string())?;
    let mut input = BufReader::new(stream);
    let mut code = 0;
    loop {
        let mut buf = String::new();
        if input.read_line(&mut buf).map_err(|e| e.to_string())? == 0 {
            break;
        }
        let v: serde_json::Value =
            serde_json::from_str(&buf).map_err(|e| format!("bad answer from the daemon: {e}"))?;
        if v.get("error").is_some() {
            code = 1;
        }
        let text = if pretty {
            serde_json::to_string_pretty(&v)
        } else {
            serde_json::to_string(&v)
        }
        .map_err(|e| e.to_string())?;
        println!("{text}");
        let unilateral = v.get("unilateral").is_some();
        if !persistent && !unilateral {
            break;
        }
    }
    Ok(code)
}
