//! Follows the journal as a durable consumer and acknowledges what it has
//! processed, so that a restart of this program, of the daemon or of the
//! machine resumes exactly where it left off.
//!
//! ```sh
//! cj consumer add indexer /srv/data
//! cargo run -p cj-client --example follow_consumer -- indexer
//! ```
use std::os::unix::ffi::OsStrExt;

use cj_client::{Client, Follow, FollowLine, FollowOptions};

/// Acknowledge after this many records (and at every quiet moment).
const ACK_EVERY: usize = 1000;

fn main() -> Result<(), cj_client::Error> {
    let name = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "indexer".to_string());
    let socket = cj_client::socket_path();
    let mut control = Client::connect(&socket)?;
    let hello = control.hello()?;
    if !hello.can("consumers") {
        eprintln!("{} cannot keep consumers; upgrade it", hello.server);
        std::process::exit(1);
    }
    let mut unacked = 0;
    for line in Follow::start(&socket, FollowOptions::consumer(&name))? {
        let line = line?;
        match &line {
            FollowLine::Change { change, .. } => {
                let path = std::path::Path::new(std::ffi::OsStr::from_bytes(&change.path));
                let what: Vec<&str> = change.changes.iter().map(|c| c.as_str()).collect();
                println!("{} {}", what.join(","), path.display());
                unacked += 1;
            }
            FollowLine::Rescan { scopes, .. } => {
                for s in scopes {
                    let path = std::path::Path::new(std::ffi::OsStr::from_bytes(&s.path));
                    println!("rescan {} (or wait for `resolved`)", path.display());
                }
            }
            FollowLine::HistoryDone { .. } => eprintln!("caught up; live from here"),
            _ => {}
        }
        let quiet = matches!(
            line,
            FollowLine::HistoryDone { .. } | FollowLine::Heartbeat { .. }
        );
        if unacked >= ACK_EVERY || (quiet && unacked > 0) {
            // A control connection idle past a minute is closed by the
            // daemon: reconnect once if so.
            if control.consumer_ack(&name, line.cursor()).is_err() {
                control = Client::connect(&socket)?;
                control.consumer_ack(&name, line.cursor())?;
            }
            unacked = 0;
        }
    }
    Ok(())
}
