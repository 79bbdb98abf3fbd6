//! `lifeboat up` with a bad manifest prints an error naming the file, line, column, key and fix
//! (snapshot-tested), exits with failure, and starts nothing.
mod common;

use common::{SiteDir, cli};

const GOOD: &str = r#"[site]
name = "guestbook"

[processes.web]
command = "touch started; exec sleep 1000"
replicas = 3
health = { path = "/healthz", interval = "1s", timeout = "500ms" }

[proxy]
listen = "127.0.0.1:0"
"#;

/// Runs `lifeboat up` on the manifest; asserts it failed and started nothing; returns stderr
/// with the temporary site path replaced by SITE.
fn up_error(manifest: &str) -> String {
    let site = SiteDir::with_manifest(manifest);
    let out = cli(site.path(), &["up"]);
    assert!(!out.status.success(), "lifeboat up accepted a bad manifest");
    assert!(
        !site.path().join("started").exists(),
        "an instance was started"
    );
    assert!(
        !site.path().join(".lifeboat/control.sock").exists(),
        "the daemon started"
    );
    String::from_utf8_lossy(&out.stderr).replace(&site.path().display().to_string(), "SITE")
}

#[test]
fn an_unknown_key_is_refused() {
    insta::assert_snapshot!(up_error(&GOOD.replace("replicas = 3", "replica = 3")));
}

#[test]
fn a_wrong_type_is_refused() {
    insta::assert_snapshot!(up_error(
        &GOOD.replace("replicas = 3", "replicas = \"three\"")
    ));
}

#[test]
fn a_missing_command_is_refused() {
    insta::assert_snapshot!(up_error(
        &GOOD.replace("command = \"touch started; exec sleep 1000\"\n", "")
    ));
}

#[test]
fn zero_replicas_are_refused() {
    insta::assert_snapshot!(up_error(&GOOD.replace("replicas = 3", "replicas = 0")));
}

#[test]
fn a_health_path_without_a_leading_slash_is_refused() {
    insta::assert_snapshot!(up_error(&GOOD.replace("\"/healthz\"", "\"healthz\"")));
}

#[test]
fn a_port_already_in_use_is_refused() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let error = up_error(&GOOD.replace("127.0.0.1:0", &format!("127.0.0.1:{port}")));
    let error = error
        .replace(&port.to_string(), "PORT")
        .replace(&(port + 1).to_string(), "PORT+1");
    insta::assert_snapshot!(error);
}

#[test]
fn a_missing_manifest_says_what_to_create() {
    let dir = tempfile::tempdir().unwrap();
    let out = cli(dir.path(), &["up"]);
    assert!(!out.status.success());
    let err =
        String::from_utf8_lossy(&out.stderr).replace(&dir.path().display().to_string(), "SITE");
    insta::assert_snapshot!(err);
}

#[test]
fn a_missing_maintenance_page_is_refused() {
    insta::assert_snapshot!(up_error(&format!(
        "{GOOD}\n[maintenance]\npage = \"down.html\"\n"
    )));
}
