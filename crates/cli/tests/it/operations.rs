//! Every operation in the table of `shared/notes/kernel.md` appears in
//! `cj changes` with the right paths, on ext4, xfs, btrfs and tmpfs.

use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::harness::{Answer, Daemon, Fs, Mount};

fn setxattr(path: &Path) {
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    let rc = unsafe { libc::setxattr(c.as_ptr(), c"user.cj".as_ptr(), b"v".as_ptr().cast(), 1, 0) };
    assert_eq!(rc, 0, "setxattr: {}", std::io::Error::last_os_error());
}

fn mmap_write(path: &Path) {
    use std::os::unix::io::AsRawFd;
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            f.as_raw_fd(),
            0,
        );
        assert_ne!(p, libc::MAP_FAILED);
        *(p as *mut u8) = b'Z';
        drop(f); // close first: CLOSE_WRITE comes at munmap (last fput)
        libc::munmap(p, 4096);
    }
}

fn odd(name: &[u8]) -> PathBuf {
    PathBuf::from(OsStr::from_bytes(name))
}

fn check(answer: &Answer, path: &Path, want: &[&str], kind: Option<&str>) {
    let got = answer.changes_of(path);
    for w in want {
        assert!(
            got.iter().any(|g| g == w),
            "{}: expected {w:?} in {got:?}\n{}",
            path.display(),
            answer.dump()
        );
    }
    if let Some(k) = kind {
        let e = answer.get(path).unwrap();
        assert_eq!(e["kind"], k, "{}: kind\n{}", path.display(), answer.dump());
    }
}

fn every_operation(fs_kind: Fs) {
    let m = Mount::new(fs_kind);
    // The state directory lives on the tracked filesystem, as /var/lib does.
    let d = Daemon::start(&m.mnt, &[]);
    let t = m.mnt.join("tree");
    let outside = m.mnt.join("outside");
    fs::create_dir_all(t.join("sub1")).unwrap();
    fs::create_dir_all(&outside).unwrap();
    for f in [
        "write_me",
        "chmod_me",
        "xattr_me",
        "rename_src",
        "cross_src",
        "over_src",
        "over_dst",
        "unlink_me",
        "trunc_me",
        "otrunc_me",
        "unseen_link_src",
    ] {
        fs::write(t.join(f), b"0123456789").unwrap();
    }
    fs::write(t.join("mmap_me"), vec![b'a'; 4096]).unwrap();
    fs::create_dir(t.join("rmdir_me")).unwrap();
    fs::create_dir_all(t.join("dir_move/inner")).unwrap();
    fs::write(t.join("dir_move/inner/file"), b"x").unwrap();
    d.track(&t);
    // Files the daemon has seen (their names are known for handle-only events).
    fs::write(t.join("link_src"), b"l").unwrap();
    fs::write(t.join("seen_victim"), b"v").unwrap();
    fs::write(t.join("seen_src"), b"s").unwrap();
    let c0 = d.cursor();

    fs::write(t.join("name with space"), b"1").unwrap();
    fs::write(t.join(odd(b"new\nline")), b"1").unwrap();
    fs::write(t.join(odd(b"bad\xff\xfeutf8")), b"1").unwrap();
    fs::OpenOptions::new()
        .append(true)
        .open(t.join("write_me"))
        .unwrap();
    {
        use std::io::Write;
        let mut f = fs::OpenOptions::new()
            .append(true)
            .open(t.join("write_me"))
            .unwrap();
        f.write_all(b"more").unwrap();
    }
    fs::set_permissions(t.join("chmod_me"), fs::Permissions::from_mode(0o600)).unwrap();
    setxattr(&t.join("xattr_me"));
    fs::rename(t.join("rename_src"), t.join("rename_dst")).unwrap();
    fs::rename(t.join("cross_src"), t.join("sub1/cross_dst")).unwrap();
    fs::rename(t.join("over_src"), t.join("over_dst")).unwrap();
    fs::rename(t.join("seen_src"), t.join("seen_victim")).unwrap();
    fs::create_dir(t.join("new_dir")).unwrap();
    fs::remove_dir(t.join("rmdir_me")).unwrap();
    fs::hard_link(t.join("link_src"), t.join("link_dst")).unwrap();
    fs::remove_file(t.join("unlink_me")).unwrap();
    symlink("target", t.join("sym")).unwrap();
    fs::OpenOptions::new()
        .write(true)
        .open(t.join("trunc_me"))
        .unwrap()
        .set_len(1)
        .unwrap();
    fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(t.join("otrunc_me"))
        .unwrap();
    mmap_write(&t.join("mmap_me"));
    fs::rename(t.join("dir_move"), t.join("dir_moved")).unwrap();
    fs::write(outside.join("not_tracked"), b"x").unwrap();

    let a = d.changes(&c0, None);
    assert_eq!(a.code, 0, "complete answer expected\n{}", a.dump());
    check(&a, &t.join("name with space"), &["created"], Some("file"));
    check(&a, &t.join(odd(b"new\nline")), &["created"], Some("file"));
    check(
        &a,
        &t.join(odd(b"bad\xff\xfeutf8")),
        &["created"],
        Some("file"),
    );
    check(&a, &t.join("write_me"), &["modified"], Some("file"));
    check(&a, &t.join("chmod_me"), &["attrib"], None);
    check(&a, &t.join("xattr_me"), &["attrib"], None);
    check(&a, &t.join("rename_src"), &["renamed_from"], None);
    check(&a, &t.join("rename_dst"), &["renamed_to"], Some("file"));
    check(&a, &t.join("cross_src"), &["renamed_from"], None);
    check(&a, &t.join("sub1/cross_dst"), &["renamed_to"], Some("file"));
    check(&a, &t.join("over_src"), &["renamed_from"], None);
    // The victim was never seen by the daemon: still reported as replaced.
    check(
        &a,
        &t.join("over_dst"),
        &["renamed_to", "deleted", "replaced"],
        Some("file"),
    );
    // A victim the daemon knew is reported as replaced.
    check(
        &a,
        &t.join("seen_victim"),
        &["renamed_to", "deleted", "replaced"],
        Some("file"),
    );
    check(&a, &t.join("new_dir"), &["created"], Some("dir"));
    check(&a, &t.join("rmdir_me"), &["deleted"], Some("dir"));
    check(&a, &t.join("link_dst"), &["created"], Some("file"));
    check(&a, &t.join("link_src"), &["attrib"], Some("file"));
    check(&a, &t.join("unlink_me"), &["deleted"], None);
    check(&a, &t.join("sym"), &["created"], Some("symlink"));
    check(&a, &t.join("trunc_me"), &["modified"], Some("file"));
    check(&a, &t.join("otrunc_me"), &["modified"], Some("file"));
    check(&a, &t.join("mmap_me"), &["modified"], Some("file"));
    check(&a, &t.join("dir_move"), &["renamed_from"], Some("dir"));
    check(&a, &t.join("dir_moved"), &["renamed_to"], Some("dir"));
    assert_eq!(a.get(&t.join("rename_src")).unwrap()["exists"], false);
    assert_eq!(a.get(&t.join("rename_dst")).unwrap()["exists"], true);
    // Nothing outside the root, nothing from the daemon's own state files.
    for e in &a.entries {
        let p = Answer::path_bytes(e, "path").unwrap();
        assert!(p.starts_with(t.as_os_str().as_bytes()), "outside root: {e}");
    }
    // The new cursor answers nothing new.
    let a2 = d.changes(&a.cursor(), None);
    assert_eq!((a2.code, a2.entries.len()), (0, 0), "{}", a2.dump());

    // Subtree queries see only their subtree.
    let a4 = d.changes(&c0, Some(&t.join("sub1")));
    assert_eq!(a4.code, 0);
    assert_eq!(a4.entries.len(), 2, "{}", a4.dump());
    check(&a4, &t.join("sub1/cross_dst"), &["renamed_to"], None);
    // The directory's listing (and mtime) changed too.
    check(&a4, &t.join("sub1"), &["modified"], Some("dir"));

    // A hard link to a file the daemon never saw: the old name's ctime
    // changed but nothing names it; the answer must say so or name it.
    let c1 = a.cursor();
    fs::hard_link(t.join("unseen_link_src"), t.join("unseen_link_dst")).unwrap();
    let a3 = d.changes(&c1, None);
    let named = a3.get(&t.join("unseen_link_src")).is_some();
    let rescan = a3
        .rescans()
        .iter()
        .any(|(p, _)| t.as_os_str().as_bytes().starts_with(p));
    assert!(named || (rescan && a3.code == 3), "{}", a3.dump());
}

#[test]
fn every_operation_ext4() {
    every_operation(Fs::Ext4);
}

#[test]
fn every_operation_xfs() {
    every_operation(Fs::Xfs);
}

#[test]
fn every_operation_btrfs() {
    every_operation(Fs::Btrfs);
}

#[test]
fn every_operation_tmpfs() {
    every_operation(Fs::Tmpfs);
}
