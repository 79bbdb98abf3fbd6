//! Every bad manifest gets an error naming the file, line and column, the key, and the fix.
//! The texts are snapshots: a change in wording shows up in review.

use lifeboat_core::Manifest;

const GOOD: &str = r#"[site]
name = "guestbook"

[processes.web]
command = "../../target/debug/guestbook"
replicas = 3
health = { path = "/healthz", interval = "1s", timeout = "500ms" }

[state]
sqlite = ["data/guestbook.db"]
dirs = ["data/uploads"]

[proxy]
listen = "127.0.0.1:8080"

[maintenance]
message = "We'll be back shortly."
"#;

fn error_for(text: &str) -> String {
    Manifest::parse("lifeboat.toml", text)
        .expect_err("the manifest must be refused")
        .to_string()
}

#[test]
fn the_example_manifest_is_accepted() {
    let m = Manifest::parse("lifeboat.toml", GOOD).unwrap();
    assert_eq!(m.site, "guestbook");
    let web = &m.processes["web"];
    assert_eq!(web.replicas, 3);
    assert_eq!(web.health.path, "/healthz");
    assert_eq!(web.health.interval, std::time::Duration::from_secs(1));
    assert_eq!(web.health.timeout, std::time::Duration::from_millis(500));
    assert_eq!(m.proxy.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(
        m.state.sqlite,
        vec![std::path::PathBuf::from("data/guestbook.db")]
    );
}

#[test]
fn an_unknown_key_is_named_with_a_suggestion() {
    let text = GOOD.replace("replicas = 3", "replica = 3");
    insta::assert_snapshot!(error_for(&text));
}

#[test]
fn an_unknown_section_is_named() {
    let text = format!("{GOOD}\n[proxxy]\nlisten = \"1.2.3.4:1\"\n");
    insta::assert_snapshot!(error_for(&text));
}

#[test]
fn a_wrong_type_names_the_key_and_the_type_to_write() {
    let text = GOOD.replace("replicas = 3", "replicas = \"3\"");
    insta::assert_snapshot!(error_for(&text));
}

#[test]
fn a_missing_command_is_refused() {
    let text = GOOD.replace("command = \"../../target/debug/guestbook\"\n", "");
    insta::assert_snapshot!(error_for(&text));
}

#[test]
fn zero_replicas_are_refused() {
    let text = GOOD.replace("replicas = 3", "replicas = 0");
    insta::assert_snapshot!(error_for(&text));
}

#[test]
fn a_health_path_without_a_leading_slash_is_refused() {
    let text = GOOD.replace("path = \"/healthz\"", "path = \"healthz\"");
    insta::assert_snapshot!(error_for(&text));
}

#[test]
fn a_duration_without_a_unit_is_refused() {
    let text = GOOD.replace("interval = \"1s\"", "interval = \"1\"");
    insta::assert_snapshot!(error_for(&text));
}

#[test]
fn a_listen_address_without_a_port_is_refused() {
    let text = GOOD.replace("127.0.0.1:8080", "localhost");
    insta::assert_snapshot!(error_for(&text));
}

#[test]
fn a_state_path_outside_the_site_is_refused() {
    let text = GOOD.replace("data/uploads", "../elsewhere");
    insta::assert_snapshot!(error_for(&text));
}

#[test]
fn a_toml_syntax_error_points_at_the_spot() {
    let text = GOOD.replace("replicas = 3", "replicas = ");
    insta::assert_snapshot!(error_for(&text));
}

#[test]
fn every_problem_is_reported_at_once() {
    let text = GOOD
        .replace("replicas = 3", "replicas = 0")
        .replace("path = \"/healthz\"", "path = \"healthz\"");
    insta::assert_snapshot!(error_for(&text));
}

#[test]
fn a_manifest_without_a_site_name_or_processes_says_what_to_add() {
    insta::assert_snapshot!(error_for("[proxy]\nlisten = \"127.0.0.1:0\"\n"));
}
