//! `init/install.sh` and `init/uninstall.sh` on a scratch qmail home
//! whose `bin/qmail-rspawn` is a dummy: install puts shardspawn in
//! `bin/shardspawn` (owner root, the group given, mode 0711, as qmail's
//! hier.c installs qmail-rspawn), makes `bin/qmail-rspawn` a symlink to
//! it and keeps the original as `qmail-rspawn.stock`, the very same file;
//! a second install keeps it still; uninstall puts it back byte for byte,
//! with its mode and inode, and removes what install added. Where
//! keeping the original is in doubt (a second original), both refuse
//! and touch nothing. Install runs the original once to learn
//! qmail-send's framing from its announcement (1 byte or 2) and writes
//! it to `ENVDIR/SHARDSPAWN_DELNUM_BYTES`, or only says it.
//!
//! The users and groups are the test's own choice (no qmail users on a
//! build machine): as root, nobody's and nogroup's when they exist.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use nix::unistd::{Gid, Group, Uid, User};

use shardspawn_workshop::{QmailHome, bin_path};

/// What the dummy original holds: a script, and bytes that are not text.
const ORIGINAL: &[u8] = b"#!/bin/sh\necho stock qmail-rspawn\nexit 0\n\
                          \x00\x01\xfe\xff not a text file after all\n";

/// Who owns what.
struct Users {
    /// OWNER_USER: root, or the test's user when it is not root.
    owner: u32,
    owner_name: Option<String>,
    /// QMAIL_GROUP.
    group: u32,
    /// QMAILR_USER.
    qmailr: u32,
}

fn users() -> Users {
    if Uid::effective().is_root() {
        let group = ["nogroup", "nobody", "daemon"]
            .iter()
            .find_map(|n| Group::from_name(n).ok().flatten())
            .map_or(Gid::effective().as_raw(), |g| g.gid.as_raw());
        let qmailr = User::from_name("nobody")
            .ok()
            .flatten()
            .map_or(0, |u| u.uid.as_raw());
        Users { owner: 0, owner_name: None, group, qmailr }
    } else {
        let me = Uid::effective().as_raw();
        Users {
            owner: me,
            owner_name: Some(me.to_string()),
            group: Gid::effective().as_raw(),
            qmailr: me,
        }
    }
}

/// A qmail home with `bin/qmail-rspawn` the dummy original, mode 0711.
struct Scratch {
    home: QmailHome,
    users: Users,
}

impl Scratch {
    fn new() -> Scratch {
        let home = QmailHome::new().expect("make a qmail home");
        fs::create_dir(home.path().join("bin")).expect("make bin");
        let original = home.path().join("bin/qmail-rspawn");
        fs::write(&original, ORIGINAL).expect("write the original");
        fs::set_permissions(&original, fs::Permissions::from_mode(0o711))
            .expect("chmod the original");
        Scratch { home, users: users() }
    }

    fn bin(&self, name: &str) -> PathBuf {
        self.home.path().join("bin").join(name)
    }

    fn state(&self) -> PathBuf {
        self.home.path().join("state")
    }

    fn logs(&self) -> PathBuf {
        self.home.path().join("logs")
    }

    /// Runs `init/SCRIPT args... HOME`: exit code and output.
    fn script(&self, script: &str, args: &[&str]) -> (Option<i32>, String) {
        self.script_with(script, args, &[])
    }

    /// As [`Scratch::script`], with more variables in its environment.
    fn script_with(
        &self,
        script: &str,
        args: &[&str],
        env: &[(&str, &Path)],
    ) -> (Option<i32>, String) {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../init").join(script);
        let mut cmd = Command::new(&path);
        cmd.args(args)
            .arg(self.home.path())
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("SHARDSPAWN_BIN", bin_path("shardspawn"))
            .env("QMAIL_GROUP", self.users.group.to_string())
            .env("QMAILR_USER", self.users.qmailr.to_string())
            .env("SHARDSPAWN_STATE_DIR", self.state())
            .env("SHARDSPAWN_LOG_DIR", self.logs())
            .envs(env.iter().copied())
            .stdin(Stdio::null());
        if let Some(owner) = &self.users.owner_name {
            cmd.env("OWNER_USER", owner);
        }
        let out = cmd.output().unwrap_or_else(|e| {
            panic!("unable to run {}: {e}", path.display())
        });
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        (out.status.code(), text)
    }

    fn install(&self) -> String {
        let (code, text) = self.script("install.sh", &[]);
        assert_eq!(code, Some(0), "install.sh failed:\n{text}");
        text
    }

    /// Checks what install.sh leaves: the binary, the symlink, the kept
    /// original (`original` is its inode), the directories.
    fn assert_installed(&self, original: u64) {
        let bin = fs::metadata(self.bin("shardspawn")).expect("shardspawn");
        assert_eq!(
            (bin.uid(), bin.gid(), bin.mode() & 0o7777),
            (self.users.owner, self.users.group, 0o711),
            "owner, group, mode of bin/shardspawn"
        );
        assert_eq!(
            fs::read(self.bin("shardspawn")).expect("read shardspawn"),
            fs::read(bin_path("shardspawn")).expect("read the build"),
            "bin/shardspawn is not the binary given"
        );
        let link = fs::symlink_metadata(self.bin("qmail-rspawn"))
            .expect("qmail-rspawn");
        assert!(link.file_type().is_symlink(), "qmail-rspawn: {link:?}");
        assert_eq!(
            fs::read_link(self.bin("qmail-rspawn")).expect("readlink"),
            Path::new("shardspawn")
        );
        assert_eq!(
            (link.uid(), link.gid()),
            (self.users.owner, self.users.group),
            "owner and group of the qmail-rspawn symlink"
        );
        // Through the symlink, as qmail-start runs it.
        let (code, usage) =
            run(Command::new(self.bin("qmail-rspawn")).arg("--help"));
        assert_eq!(code, Some(0), "{usage}");
        assert!(usage.starts_with("usage: shardspawn"), "{usage}");
        self.assert_original(&self.bin("qmail-rspawn.stock"), original);
        for dir in [self.state(), self.logs()] {
            let meta = fs::metadata(&dir).expect("directory made");
            assert!(meta.is_dir());
            assert_eq!(
                (meta.uid(), meta.gid()),
                (self.users.qmailr, self.users.group),
                "owner of {}",
                dir.display()
            );
        }
    }

    /// `path` is the original: its bytes, mode 0711, and its inode.
    fn assert_original(&self, path: &Path, inode: u64) {
        let meta = fs::symlink_metadata(path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(meta.is_file(), "{} is not a file", path.display());
        assert_eq!(meta.mode() & 0o7777, 0o711, "{}", path.display());
        assert_eq!(meta.ino(), inode, "{} is another file", path.display());
        assert_eq!(fs::read(path).expect("read"), ORIGINAL);
    }
}

fn run(cmd: &mut Command) -> (Option<i32>, String) {
    let out = cmd.stdin(Stdio::null()).output().expect("run");
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.code(), text)
}

fn inode(path: &Path) -> u64 {
    fs::metadata(path).expect("stat").ino()
}

#[test]
fn install_twice_then_uninstall_gives_back_the_original() {
    let s = Scratch::new();
    let original = inode(&s.bin("qmail-rspawn"));
    let text = s.install();
    assert!(text.contains("qmail-rspawn.stock"), "{text}");
    s.assert_installed(original);

    // Again, as for an upgrade: the kept original is not lost.
    let text = s.install();
    assert!(text.contains("shardspawn already"), "{text}");
    s.assert_installed(original);

    let (code, text) = s.script("uninstall.sh", &[]);
    assert_eq!(code, Some(0), "uninstall.sh failed:\n{text}");
    s.assert_original(&s.bin("qmail-rspawn"), original);
    for gone in ["qmail-rspawn.stock", "shardspawn"] {
        assert!(!s.bin(gone).exists(), "{gone} is still there");
    }
    assert!(!s.state().exists(), "the state directory is still there");
    assert!(s.logs().is_dir(), "the logs should stay without --purge");
    let mut left: Vec<String> = fs::read_dir(s.home.path().join("bin"))
        .expect("ls bin")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into())
        .collect();
    left.sort();
    assert_eq!(left, ["qmail-rspawn"], "bin holds only the original");

    // Once more: nothing to do, nothing broken.
    let (code, text) = s.script("uninstall.sh", &["--purge"]);
    assert_eq!(code, Some(0), "{text}");
    s.assert_original(&s.bin("qmail-rspawn"), original);
    assert!(!s.logs().exists(), "--purge left the logs");
}

#[test]
fn a_second_original_is_never_overwritten() {
    let s = Scratch::new();
    let original = inode(&s.bin("qmail-rspawn"));
    s.install();
    // qmail reinstalled over us: qmail-rspawn is a new file again.
    let newer = b"#!/bin/sh\necho a newer qmail-rspawn\n";
    fs::remove_file(s.bin("qmail-rspawn")).expect("rm the symlink");
    fs::write(s.bin("qmail-rspawn"), newer).expect("write the newer one");
    for script in ["install.sh", "uninstall.sh"] {
        let (code, text) = s.script(script, &[]);
        assert_eq!(code, Some(111), "{script} went ahead:\n{text}");
        assert!(text.contains("qmail-rspawn.stock"), "{text}");
        s.assert_original(&s.bin("qmail-rspawn.stock"), original);
        assert_eq!(fs::read(s.bin("qmail-rspawn")).expect("read"), newer);
    }
}

#[test]
fn no_qmail_no_install() {
    let s = Scratch::new();
    fs::remove_file(s.bin("qmail-rspawn")).expect("rm the original");
    let (code, text) = s.script("install.sh", &[]);
    assert_eq!(code, Some(111), "{text}");
    assert!(text.contains("is qmail installed"), "{text}");
    assert!(!s.bin("shardspawn").exists());
    assert!(!s.bin("qmail-rspawn").exists());
    assert!(!s.state().exists());
}

/// A stand-in for the qmail-rspawn being replaced: it notes who ran it,
/// reads its stdin to the end (so a stdin not at EOF would hang it), and
/// writes `announcement` (as printf(1) escapes) on stdout.
fn original_announcing(s: &Scratch, announcement: &str) -> PathBuf {
    let notes = s.home.path().join("notes");
    fs::create_dir(&notes).expect("make notes");
    fs::set_permissions(&notes, fs::Permissions::from_mode(0o777))
        .expect("chmod notes");
    let script = format!(
        "#!/bin/sh\nid -u >{}/uid\ncat >/dev/null\nprintf '{announcement}'\n",
        notes.display()
    );
    fs::write(s.bin("qmail-rspawn"), script).expect("write the original");
    fs::set_permissions(
        s.bin("qmail-rspawn"),
        fs::Permissions::from_mode(0o755),
    )
    .expect("chmod the original");
    notes.join("uid")
}

/// The service's env directory, with SHARDSPAWN_DELNUM_BYTES `was`.
fn envdir(s: &Scratch, was: &str) -> PathBuf {
    let env = s.home.path().join("env");
    fs::create_dir(&env).expect("make env");
    fs::write(env.join("SHARDSPAWN_DELNUM_BYTES"), was).expect("write env");
    env
}

/// Issue 15: a 2-byte shardspawn under a 1-byte qmail-send (or the
/// reverse) was not detected at all. install.sh asks the qmail-rspawn
/// it replaces, which was built with qmail-send's framing.
#[test]
fn install_writes_the_framing_the_original_announces() {
    for (announcement, slots, bytes, was) in
        [("\\170", 120, "1", "2\n"), ("\\375\\001", 509, "2", "1\n")]
    {
        let s = Scratch::new();
        let uid = original_announcing(&s, announcement);
        let env = envdir(&s, was);
        let (code, text) =
            s.script_with("install.sh", &[], &[("ENVDIR", &env)]);
        assert_eq!(code, Some(0), "{text}");
        let want = format!("announces {slots} slots in {bytes} byte(s)");
        assert!(text.contains(&want), "want {want:?} in {text}");
        assert_eq!(
            fs::read_to_string(env.join("SHARDSPAWN_DELNUM_BYTES")).unwrap(),
            format!("{bytes}\n"),
            "{text}"
        );
        // As qmail-start runs it: as qmailr, never as root.
        assert_eq!(
            fs::read_to_string(&uid).expect("the original ran").trim(),
            s.users.qmailr.to_string()
        );
        let left: Vec<_> = fs::read_dir(&env).unwrap().collect();
        assert_eq!(left.len(), 1, "{left:?}");
    }
}

#[test]
fn without_an_envdir_install_only_says_the_framing() {
    let s = Scratch::new();
    original_announcing(&s, "\\375\\001");
    let text = s.install();
    assert!(text.contains("SHARDSPAWN_DELNUM_BYTES=2"), "{text}");
    assert!(text.contains("run this with ENVDIR"), "{text}");
}

#[test]
fn an_original_that_says_nothing_leaves_the_setting_alone() {
    let s = Scratch::new();
    original_announcing(&s, "");
    let env = envdir(&s, "2\n");
    let (code, text) = s.script_with("install.sh", &[], &[("ENVDIR", &env)]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("announced nothing"), "{text}");
    assert!(text.contains("set SHARDSPAWN_DELNUM_BYTES yourself"), "{text}");
    assert_eq!(
        fs::read_to_string(env.join("SHARDSPAWN_DELNUM_BYTES")).unwrap(),
        "2\n"
    );
    // Three bytes are no framing either.
    let s = Scratch::new();
    original_announcing(&s, "abc");
    let env = envdir(&s, "1\n");
    let (_, text) = s.script_with("install.sh", &[], &[("ENVDIR", &env)]);
    assert!(text.contains("announced 3 bytes, not 1 or 2"), "{text}");
    assert_eq!(
        fs::read_to_string(env.join("SHARDSPAWN_DELNUM_BYTES")).unwrap(),
        "1\n"
    );
}

#[test]
fn an_envdir_that_is_not_there_stops_the_install_first() {
    let s = Scratch::new();
    let missing = s.home.path().join("no-env");
    let (code, text) =
        s.script_with("install.sh", &[], &[("ENVDIR", &missing)]);
    assert_eq!(code, Some(111), "{text}");
    assert!(text.contains("ENVDIR="), "{text}");
    assert!(!s.bin("shardspawn").exists(), "installed anyway");
}
