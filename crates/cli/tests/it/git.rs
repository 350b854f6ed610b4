//! The git fsmonitor hook against the real git (issue 13): an oracle over
//! git itself. After each batch of random worktree operations, `git status`
//! with cj's hook must print exactly what it prints without any fsmonitor.
//! Batches straddle a daemon kill -9 and a downtime with changes.

use std::path::Path;
use std::process::Command;

use crate::harness::{Daemon, Fs, Mount, CJ};
use crate::oracle;
use crate::workload::{self, Model, Rng};

/// `git -C dir ARGS` with the test's environment (no system config, HOME
/// beside the worktree) and `env`; its output, which must be a success.
pub(crate) fn git_with(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("HOME", dir.parent().unwrap())
        .envs(env.iter().copied())
        .output()
        .expect("git is installed (.ci/run installs it)");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

pub(crate) fn git(dir: &Path, args: &[&str]) -> String {
    String::from_utf8_lossy(&git_with(dir, args, &[]).stdout).into_owned()
}

/// `git status` with the configured fsmonitor (`incremental`: git must ask
/// cj with its last token), and with none. The second
/// one must not write the index: it would drop the fsmonitor token, and
/// the next status with the hook would start from nothing ("add
/// fsmonitor") instead of asking cj what changed since its token.
fn statuses(wt: &Path, incremental: bool) -> (String, String) {
    let args = ["status", "--porcelain=v2", "-uall", "--ignored=no"];
    let out = git_with(wt, &args, &[("GIT_TRACE_FSMONITOR", "2")]);
    let trace = String::from_utf8_lossy(&out.stderr);
    // An incremental answer: git read its last token from the index.
    assert!(
        !incremental || trace.contains("read fsmonitor extension successful 'cj1."),
        "git did not ask cj with its last token:\n{trace}"
    );
    let with = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut plain = vec!["--no-optional-locks", "-c", "core.fsmonitor=false"];
    plain.extend_from_slice(&args);
    (with, git(wt, &plain))
}

/// A daemon and a repository. `enclosing`: the whole filesystem is
/// tracked (the worktree is a subtree of it), and reconciling it after a
/// gap is made slow, so that the hook's answers after a restart come from
/// scoped catch-ups of the worktree (design 11.8).
fn setup(m: &Mount, enclosing: bool) -> (Daemon, std::path::PathBuf) {
    let extra: &[&str] = if enclosing {
        &["--test-reconcile-delay-ms", "120000"]
    } else {
        &[]
    };
    let d = Daemon::start(&m.dir.path().join("daemon"), extra);
    if enclosing {
        d.track(&m.mnt);
        d.reconciled();
    }
    let wt = m.mnt.join("repo");
    std::fs::create_dir_all(wt.join("src/sub")).unwrap();
    git(&wt, &["init", "-q"]);
    git(&wt, &["config", "user.email", "t@example.com"]);
    git(&wt, &["config", "user.name", "t"]);
    std::fs::write(wt.join(".gitignore"), "ignored/\n").unwrap();
    std::fs::create_dir_all(wt.join("ignored")).unwrap();
    std::fs::write(wt.join("src/a.txt"), "a\n").unwrap();
    std::fs::write(wt.join("src/sub/b.txt"), "b\n").unwrap();
    git(&wt, &["add", "-A"]);
    git(&wt, &["commit", "-qm", "init"]);
    let out = Command::new(CJ)
        .arg("--socket")
        .arg(&d.socket)
        .arg("git-setup")
        .arg(&wt)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    d.reconciled();
    // The first status with the hook gets cj's first token.
    let (a, b) = statuses(&wt, false);
    assert_eq!(a, b);
    // Git really asks cj (and cj answers).
    let out = Command::new("git")
        .arg("-C")
        .arg(&wt)
        .args(["status", "--porcelain=v2"])
        .env("GIT_TRACE_FSMONITOR", "2")
        .output()
        .unwrap();
    let trace = String::from_utf8_lossy(&out.stderr);
    assert!(trace.contains("git-fsmonitor' returned success"), "{trace}");
    (d, wt)
}

fn models(rng: &mut Rng, wt: &Path) -> Vec<Model> {
    (0..2)
        .map(|k| {
            let own = wt.join(format!("w{k}"));
            std::fs::create_dir_all(own.join("sub")).unwrap();
            let mut m = Model::new(
                vec![
                    own.clone(),
                    own.join("sub"),
                    wt.join("src"),
                    wt.join("ignored"),
                ],
                Vec::new(),
            );
            workload::run(rng, &mut m, 10);
            m
        })
        .collect()
}

fn batch(rng: &mut Rng, models: &mut [Model], ops: usize) {
    for m in models.iter_mut() {
        workload::run(rng, m, ops);
    }
}

fn git_oracle(fs: Fs, seed: u64, enclosing: bool) {
    let m = Mount::new(fs);
    let (mut d, wt) = setup(&m, enclosing);
    let mut rng = Rng(seed);
    let mut models = models(&mut rng, &wt);
    for round in 0..8 {
        match round {
            // A batch that straddles a kill -9 and a restart.
            3 => {
                batch(&mut rng, &mut models, 15);
                d.kill9();
                batch(&mut rng, &mut models, 15);
                d.spawn();
            }
            // Changes while the daemon is stopped.
            5 => {
                d.stop();
                batch(&mut rng, &mut models, 30);
                d.spawn();
            }
            // Commit now and then, so that the index moves too.
            6 => {
                git(&wt, &["add", "-A"]);
                git(&wt, &["commit", "-qm", "round", "--allow-empty"]);
            }
            _ => batch(&mut rng, &mut models, 30),
        }
        let (with, without) = statuses(&wt, true);
        assert_eq!(
            with,
            without,
            "seed {seed} round {round}: git status differs with cj's fsmonitor\n{}",
            d.log_text()
        );
    }
    if enclosing {
        // After the kill -9 and the downtime, the worktree was reconciled
        // ahead of the filesystem (whose own reconciliation is still
        // running).
        let log = d.log_text();
        let n = log.matches(" ahead of ").count();
        assert!(n >= 2, "{n} scoped catch-ups:\n{log}");
    }
}

#[test]
fn git_status_with_the_hook_equals_git_status_without_ext4() {
    for seed in oracle::seeds(&[41, 42]) {
        git_oracle(Fs::Ext4, seed, false);
    }
}

#[test]
fn git_status_with_the_hook_equals_git_status_without_in_a_tracked_filesystem() {
    for seed in oracle::seeds(&[44]) {
        git_oracle(Fs::Ext4, seed, true);
    }
}

#[test]
fn git_status_with_the_hook_equals_git_status_without_tmpfs() {
    for seed in oracle::seeds(&[43]) {
        git_oracle(Fs::Tmpfs, seed, false);
    }
}

fn hook(d: &Daemon, wt: &Path, token: &str) -> std::process::Output {
    Command::new(CJ)
        .arg("--socket")
        .arg(&d.socket)
        .args(["git-fsmonitor", "2", token])
        .current_dir(wt)
        .output()
        .unwrap()
}

#[test]
fn unknown_corrupted_and_unanswerable_tokens_make_git_look_at_everything() {
    let m = Mount::new(Fs::Tmpfs);
    let (mut d, wt) = setup(&m, false);
    let cursor = d.cursor();
    std::fs::write(wt.join("src/new.txt"), "n\n").unwrap();
    std::fs::create_dir_all(wt.join("src/dir/deep")).unwrap();
    // A good token: the new paths, relative, a new directory with a '/'.
    let out = hook(&d, &wt, &cursor);
    assert!(out.status.success());
    let parts: Vec<&[u8]> = out.stdout.split(|b| *b == 0).collect();
    assert!(parts[0].starts_with(b"cj1."));
    assert!(
        parts.contains(&&b"src/new.txt"[..]),
        "{:?}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        parts.contains(&&b"src/dir/"[..]),
        "{:?}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(!parts.iter().any(|p| p.starts_with(b".git")));
    // Git's first token (a time), a corrupted cursor, a foreign one: "/".
    // (The last hex digit of the checksum changed: to '1' if it was '0'.)
    let mut corrupted = cursor.clone();
    let last = corrupted.pop();
    corrupted.push(if last == Some('0') { '1' } else { '0' });
    for token in ["1732912345678901234", corrupted.as_str(), ""] {
        let out = hook(&d, &wt, token);
        assert!(out.status.success(), "{token}");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            text.starts_with("cj1.") && text.ends_with("\0/\0"),
            "{token}: {text:?}"
        );
    }
    // Version 1 is refused (git then looks at everything).
    let out = Command::new(CJ)
        .arg("--socket")
        .arg(&d.socket)
        .args(["git-fsmonitor", "1", "12345"])
        .current_dir(&wt)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    // The daemon stopped: the hook fails, git status is still right.
    d.stop();
    std::fs::write(wt.join("src/while-down.txt"), "d\n").unwrap();
    let (with, without) = statuses(&wt, true);
    assert_eq!(with, without);
    assert!(with.contains("while-down.txt"));
}

/// A path whose type changed (symlink to file, file to directory and
/// back) is listed with and without its trailing slash: git matches
/// `name/` only against entries below `name`, so with the slash alone it
/// kept the old symlink as unchanged (found by git's own t3903-stash.sh
/// run through the hook: `rm link; cp file link; git stash` saw nothing).
#[test]
fn a_path_whose_type_changed_is_seen_by_git() {
    let m = Mount::new(Fs::Tmpfs);
    let (d, wt) = setup(&m, false);
    // At the top of the worktree: no parent directory is listed with it.
    std::os::unix::fs::symlink("src/a.txt", wt.join("link")).unwrap();
    git(&wt, &["add", "-A"]);
    git(&wt, &["commit", "-qm", "link"]);
    let (a, b) = statuses(&wt, true);
    assert_eq!(a, b);
    // Past git's racy-timestamp window, so that git trusts its index.
    std::thread::sleep(std::time::Duration::from_millis(2500));
    let (a, b) = statuses(&wt, true);
    assert_eq!(a, b);
    let token = d.cursor();
    std::fs::remove_file(wt.join("link")).unwrap();
    std::fs::copy(wt.join("src/a.txt"), wt.join("link")).unwrap();
    let out = hook(&d, &wt, &token);
    let parts: Vec<&[u8]> = out.stdout.split(|b| *b == 0).collect();
    assert!(
        parts.contains(&&b"link"[..]),
        "{:?}",
        String::from_utf8_lossy(&out.stdout)
    );
    let (with, without) = statuses(&wt, true);
    assert_eq!(with, without, "{}", d.log_text());
    assert!(with.contains("link"), "{with}");
}
