//! The `pushbox` binary: configuration errors, user management, SIGTERM.

use std::{
    io::Write,
    process::{Command, Stdio},
};

fn pushbox() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_pushbox"));
    c.env_remove("PUSHBOX_CONFIG").env_remove("RUST_LOG");
    c
}

fn write_config(dir: &std::path::Path, body: &str) -> std::path::PathBuf {
    let p = dir.join("pushbox.toml");
    std::fs::write(&p, body).unwrap();
    p
}

/// `pushbox serve` with this configuration must refuse to start (exit 2);
/// returns what it printed on stderr.
fn serve_refuses(dir: &std::path::Path, body: &str) -> String {
    let cfg = write_config(dir, body);
    let out = pushbox().arg("--config").arg(&cfg).arg("serve").output().unwrap();
    assert_eq!(out.status.code(), Some(2), "serve refuses to start");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn unknown_key_exits_2_naming_file_key_and_suggestion() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "domian = \"example.org\"\n[limits]\nmax_stanza_sise = 5\n");
    let out = pushbox().arg("--config").arg(&cfg).arg("check").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&cfg.display().to_string()), "names the file: {err}");
    assert!(
        err.contains("`domian`") && err.contains("did you mean `domain`"),
        "{err}"
    );
    assert!(
        err.contains("`limits.max_stanza_sise`") && err.contains("`limits.max_stanza_size`"),
        "both reported: {err}"
    );
}

#[test]
fn bad_type_exits_2_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let err = serve_refuses(dir.path(), "[limits]\nmax_depth = \"deep\"\n");
    assert!(err.contains("`limits.max_depth`"), "{err}");
}

#[test]
fn missing_cert_file_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let err = serve_refuses(
        dir.path(),
        "[tls]\nmode = \"files\"\ncert = \"nope.pem\"\nkey = \"nope.key\"\n",
    );
    assert!(err.contains("`tls.cert`") && err.contains("`tls.key`"), "{err}");
    assert!(!dir.path().join("data").exists(), "nothing was started or created");
}

#[test]
fn environment_overrides_are_checked_too() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "");
    let out = pushbox()
        .arg("--config")
        .arg(&cfg)
        .arg("check")
        .env("PUSHBOX_TLS__MODE", "bogus")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("PUSHBOX_TLS__MODE") && err.contains("`tls.mode`"), "{err}");
    let ok = pushbox()
        .arg("--config")
        .arg(&cfg)
        .args(["check", "config"])
        .env("PUSHBOX_DOMAIN", "chat.example")
        .output()
        .unwrap();
    assert!(ok.status.success());
    assert!(String::from_utf8_lossy(&ok.stdout).contains("chat.example"));
}

#[test]
fn user_add_list_passwd_del() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "");
    let run = |args: &[&str], stdin: Option<&str>| {
        let mut c = pushbox()
            .arg("--config")
            .arg(&cfg)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        if let Some(s) = stdin {
            c.stdin.take().unwrap().write_all(s.as_bytes()).unwrap();
        }
        drop(c.stdin.take());
        c.wait_with_output().unwrap()
    };
    assert!(run(&["user", "add", "alice", "--password-stdin"], Some("pw\n"))
        .status
        .success());
    let dup = run(&["user", "add", "alice@localhost", "--password-stdin"], Some("pw\n"));
    assert!(!dup.status.success());
    assert!(String::from_utf8_lossy(&dup.stderr).contains("already exists"));
    let list = run(&["user", "list"], None);
    assert_eq!(String::from_utf8_lossy(&list.stdout).trim(), "alice@localhost");
    // A password no schema or row could contain by chance (the schema has
    // words like "new" in it).
    assert!(
        run(&["user", "passwd", "alice", "--password-stdin"], Some("Zq7-plain\n"))
            .status
            .success()
    );
    // The password is not stored anywhere in the database file.
    let db = std::fs::read(dir.path().join("data/pushbox.sqlite3")).unwrap();
    assert!(
        !db.windows(9).any(|w| w == b"Zq7-plain"),
        "no plaintext password at rest"
    );
    assert!(run(&["user", "del", "alice"], None).status.success());
    assert!(String::from_utf8_lossy(&run(&["user", "list"], None).stdout)
        .trim()
        .is_empty());
    let inv = run(&["invite", "create", "--uses", "2"], None);
    let out = String::from_utf8_lossy(&inv.stdout);
    assert!(
        out.contains("https://localhost:5443/invite/") && out.contains("xmpp:localhost?register;preauth="),
        "the link names the https listener's port when it is not 443: {out}"
    );
    let err = String::from_utf8_lossy(&inv.stderr);
    assert!(err.contains("mode is \"closed\""), "a closed server warns: {err}");
}

#[test]
fn room_create_list_destroy() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "");
    let run = |args: &[&str]| pushbox().arg("--config").arg(&cfg).args(args).output().unwrap();
    let out = run(&[
        "room",
        "create",
        "Club",
        "--owner",
        "alice",
        "--private",
        "--title",
        "The club",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "club@groups.localhost");
    let again = run(&["room", "create", "club", "--owner", "alice"]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("exists already"));
    let bad = run(&["room", "create", "a b@c", "--owner", "alice"]);
    assert!(!bad.status.success(), "not a room name");
    let list = String::from_utf8_lossy(&run(&["room", "list"]).stdout).to_string();
    assert!(
        list.contains("club@groups.localhost")
            && list.contains("members-only,non-anonymous")
            && list.contains("owners alice@localhost")
            && list.contains("The club"),
        "{list}"
    );
    assert!(run(&["room", "destroy", "club"]).status.success());
    assert!(String::from_utf8_lossy(&run(&["room", "list"]).stdout)
        .trim()
        .is_empty());
    let gone = run(&["room", "destroy", "club"]);
    assert!(!gone.status.success());
    assert!(String::from_utf8_lossy(&gone.stderr).contains("no room"));
}

#[test]
fn output_into_a_closed_pipe_ends_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "");
    // Like `pushbox invite create | head -1` when head has already exited:
    // the reader is gone before the command writes.
    let mut c = pushbox()
        .arg("--config")
        .arg(&cfg)
        .args(["invite", "create"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(c.stdout.take());
    let out = c.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    use std::os::unix::process::ExitStatusExt;
    const SIGPIPE: i32 = 13;
    assert_eq!(out.status.signal(), Some(SIGPIPE), "ended by SIGPIPE: {:?}", out.status);
}

#[test]
fn version_flag() {
    let out = pushbox().arg("--version").output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains(env!("CARGO_PKG_VERSION")));
}

#[cfg(unix)]
#[test]
fn sigterm_closes_streams_and_exits_0() {
    use std::io::{BufRead, BufReader, Read};
    let dir = tempfile::tempdir().unwrap();
    // Find a free port for the daemon.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cfg = write_config(
        dir.path(),
        &format!("[listen]\nc2s = [\"127.0.0.1:{port}\"]\nc2s_direct_tls = []\nhttps = []\n"),
    );
    let mut child = pushbox()
        .arg("--config")
        .arg(&cfg)
        .arg("serve")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    while !line.contains("pushbox is ready") {
        line.clear();
        assert!(err.read_line(&mut line).unwrap() > 0, "daemon exited before ready");
    }
    let mut tcp = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    tcp.write_all(b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='localhost' version='1.0'>").unwrap();
    tcp.set_read_timeout(Some(std::time::Duration::from_secs(20))).unwrap();
    let mut buf = [0u8; 4096];
    let n = tcp.read(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).contains("starttls"));
    // SAFETY-free: plain libc-less kill through the kill command.
    let st = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(st.success());
    let mut rest = Vec::new();
    let _ = tcp.read_to_end(&mut rest);
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "clean exit on SIGTERM");
    let rest = String::from_utf8_lossy(&rest);
    assert!(rest.contains("</stream:stream>"), "stream closed: {rest}");
}

#[test]
fn turn_config_errors_name_their_keys() {
    let dir = tempfile::tempdir().unwrap();
    let err = serve_refuses(
        dir.path(),
        "[turn]\nmode = \"builtin\"\nrelay_ports = \"60000-50000\"\nallowed_peers = [\"10.0.0.0/33\"]\nsecret = \"short\"\n",
    );
    for key in ["`turn.relay_ports`", "`turn.allowed_peers`", "`turn.secret`"] {
        assert!(err.contains(key), "{key}: {err}");
    }
    let cfg = write_config(dir.path(), "[turn]\nsecret = \"0123456789abcdef0123\"\n");
    let out = pushbox()
        .arg("--config")
        .arg(&cfg)
        .args(["check", "config"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "an external server needs a host");
    assert!(String::from_utf8_lossy(&out.stderr).contains("`turn.host`"));
}

/// `check ports` for the built-in TURN server: a UDP port held by something
/// that is not a STUN server is an error; a free one is fine.
#[test]
fn check_ports_probes_the_turn_udp_port() {
    let dir = tempfile::tempdir().unwrap();
    let squatter = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = squatter.local_addr().unwrap().port();
    let cfg = write_config(
        dir.path(),
        &format!(
            "[listen]\nc2s = []\nc2s_direct_tls = []\nhttps = []\n\
             [turn]\nmode = \"builtin\"\nbind = [\"127.0.0.1\"]\nport = {port}\ntls_port = 0\n"
        ),
    );
    let out = pushbox()
        .arg("--config")
        .arg(&cfg)
        .args(["check", "ports", "--json"])
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{report}");
    assert!(report.contains("no STUN server answers"), "{report}");
    assert!(
        report.contains("not a public address"),
        "127.0.0.1 is announced: {report}"
    );
    drop(squatter);
    let out = pushbox()
        .arg("--config")
        .arg(&cfg)
        .args(["check", "ports", "--json"])
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{report}");
    assert!(
        report.contains(&format!("turn.port (udp) 127.0.0.1:{port}")),
        "{report}"
    );
}
