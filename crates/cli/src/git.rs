//! `cj git-fsmonitor` (git's fsmonitor hook, protocol version 2) and
//! `cj git-setup` (docs/git.md).
//!
//! Git runs the hook from the worktree root as `HOOK 2 <token>` and reads:
//! a new token, NUL, then either `/` alone (nothing is known: git checks
//! everything) or the changed paths relative to the worktree, each followed
//! by NUL, directories whose whole cone may have changed with a trailing
//! `/`. The token is a cj cursor, so it stays valid across daemon restarts
//! and reboots. One `changes` request; the hook never walks (after a gap
//! the daemon may reconcile the worktree first).

use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use cj_client::{Client, EXIT_COMPLETE, EXIT_ERROR};

/// How long the hook lets the daemon close a gap below the worktree (a
/// scoped catch-up after a restart or an overflow, design 11.8) before it
/// answers `/` (git then looks at everything itself, which costs about as
/// much as that walk). `CJ_GIT_WAIT_MS` overrides it; 0 never waits.
pub const HOOK_WAIT_MS: u64 = 2000;

fn hook_wait() -> std::time::Duration {
    let ms = std::env::var("CJ_GIT_WAIT_MS")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(HOOK_WAIT_MS);
    std::time::Duration::from_millis(ms)
}

/// The answer git gets: the new token, then `/` or the paths.
pub fn fsmonitor(socket: &Path, version: &str, token: &str) -> Result<i32> {
    if version != "2" {
        // Git then checks everything itself: slow, never wrong.
        eprintln!(
            "cj git-fsmonitor: hook version {version} is not supported (only 2: \
             `cj git-setup` sets core.fsmonitorHookVersion=2)"
        );
        return Ok(EXIT_ERROR);
    }
    let worktree = std::env::current_dir()
        .and_then(std::fs::canonicalize)
        .context("reading the worktree directory")?;
    let worktree = worktree.as_os_str().as_bytes().to_vec();
    let mut client = match Client::connect(socket) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("cj git-fsmonitor: {e}");
            return Ok(EXIT_ERROR);
        }
    };
    let mut out = Vec::new();
    if cj_types::Cursor::parse(token).is_err() {
        // Git's first token (a time), or one that is not ours.
        let cursor = match client.cursor(Some(&worktree)) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("cj git-fsmonitor: {e}");
                return Ok(EXIT_ERROR);
            }
        };
        trivial(&mut out, &cursor);
        return emit(&out);
    }
    let answer = match client.changes_wait(token, Some(&worktree), Some(hook_wait())) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("cj git-fsmonitor: {e}");
            return Ok(EXIT_ERROR);
        }
    };
    if !answer.complete {
        // A gap cj cannot close yet, an expired or foreign cursor: git
        // checks everything (and the next token is good again).
        trivial(&mut out, &answer.cursor);
        return emit(&out);
    }
    out.extend_from_slice(answer.cursor.as_bytes());
    out.push(0);
    for e in &answer.entries {
        let Some(rel) = relative(&e.path, &worktree) else {
            continue;
        };
        if rel.is_empty() || is_git_dir(rel) {
            continue;
        }
        // The name itself: git matches `name/` only against entries
        // below it, so a file that replaced a directory or a symlink (or
        // the reverse) must be listed without the slash too (found by
        // git's t3903-stash.sh run through this hook).
        out.extend_from_slice(rel);
        out.push(0);
        if e.subtree && !rel.ends_with(b"/") {
            out.extend_from_slice(rel);
            out.extend_from_slice(b"/\0");
        }
    }
    emit(&out)
}

/// `token NUL / NUL`: git checks everything.
fn trivial(out: &mut Vec<u8>, cursor: &str) {
    out.extend_from_slice(cursor.as_bytes());
    out.push(0);
    out.extend_from_slice(b"/\0");
}

fn emit(out: &[u8]) -> Result<i32> {
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(out)
        .and_then(|()| stdout.flush())
        .context("cannot write the answer to git")?;
    Ok(EXIT_COMPLETE)
}

/// `path` relative to `root` (`None` outside it).
fn relative<'a>(path: &'a [u8], root: &[u8]) -> Option<&'a [u8]> {
    let rest = path.strip_prefix(root)?;
    match rest.first() {
        None => Some(rest),
        Some(b'/') => Some(&rest[1..]),
        Some(_) if root.ends_with(b"/") => Some(rest),
        Some(_) => None,
    }
}

/// Git's own directory (or a `.git` file of a linked worktree): git does
/// not want to hear about its own writes.
fn is_git_dir(rel: &[u8]) -> bool {
    rel == b".git" || rel.starts_with(b".git/")
}

fn git(repo: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(repo)
        .args(args)
        .output()
        .context("running git (is it installed?)")?;
    if !out.status.success() {
        bail!(
            "git {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Points the repository's fsmonitor at cj (tracking the worktree first
/// when root runs it), or with `undo` takes it away again.
pub fn setup(socket: &Path, explicit_socket: bool, repo: Option<&Path>, undo: bool) -> Result<i32> {
    let repo = repo
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let top = PathBuf::from(git(&repo, &["rev-parse", "--show-toplevel"])?);
    if undo {
        for key in ["core.fsmonitor", "core.fsmonitorHookVersion"] {
            let _ = git(&top, &["config", "--unset", key]);
        }
        crate::say(format_args!("{}: git no longer asks cj", top.display()))?;
        return Ok(EXIT_COMPLETE);
    }
    let worktree = std::fs::canonicalize(&top)
        .with_context(|| format!("resolving {}", top.display()))?
        .as_os_str()
        .as_bytes()
        .to_vec();
    let mut client = crate::connect(socket)?;
    match client.cursor(Some(&worktree)) {
        Ok(_) => {}
        Err(cj_client::Error::Daemon { code, .. }) if code == "not_tracked" => {
            // SAFETY: geteuid has no preconditions.
            if unsafe { libc::geteuid() } != 0 {
                bail!(
                    "{} is not in a tracked tree; ask the administrator to run `cj track` on it \
                     (or on a directory above it)",
                    top.display()
                );
            }
            client.track(&worktree)?;
            crate::say(format_args!("tracking {}", top.display()))?;
        }
        Err(e) => return Err(e.into()),
    }
    let exe = std::env::current_exe().context("finding the cj binary")?;
    let mut hook = format!("'{}'", exe.display());
    if explicit_socket {
        hook.push_str(&format!(" --socket '{}'", socket.display()));
    }
    hook.push_str(" git-fsmonitor");
    git(&top, &["config", "core.fsmonitor", &hook])?;
    git(&top, &["config", "core.fsmonitorHookVersion", "2"])?;
    // Git then also skips reading directories cj says did not change.
    git(&top, &["config", "core.untrackedCache", "true"])?;
    crate::say(format_args!(
        "{}: git status now asks cj what changed (undo with `cj git-setup --undo`)",
        top.display()
    ))?;
    Ok(EXIT_COMPLETE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_made_relative_to_the_worktree_and_git_dirs_are_skipped() {
        assert_eq!(relative(b"/w/a/b", b"/w"), Some(&b"a/b"[..]));
        assert_eq!(relative(b"/w", b"/w"), Some(&b""[..]));
        assert_eq!(relative(b"/wx/a", b"/w"), None);
        assert_eq!(relative(b"/w/a", b"/"), Some(&b"w/a"[..]));
        assert!(is_git_dir(b".git") && is_git_dir(b".git/index"));
        assert!(!is_git_dir(b".gitignore") && !is_git_dir(b"a/.git"));
    }
}
