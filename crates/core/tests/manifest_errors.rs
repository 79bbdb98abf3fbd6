//! Every bad manifest gets an error naming the file, line and column, the key, and the fix.
//! The texts are snapshots: a change in wording shows up in review.

use std::time::Duration;

use lifeboat_core::Manifest;
use lifeboat_core::manifest::CredentialsSpec;

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

// ---- [vault] and [credentials] ----------------------------------------------------------------

const VAULT: &str = r#"
[vault]
destinations = [".lifeboat/vault", "/mnt/other-disk/guestbook", "s3://my-bucket/guestbook?endpoint=https://s3.example.net&region=eu-1"]
quorum = 2
segment_interval = "250ms"
checkpoint_interval = "5m"

[credentials]
rotate = "./rotate-credentials.sh"
"#;

fn with_vault(vault: &str) -> String {
    format!("{GOOD}\n[vault]\n{vault}")
}

#[test]
fn a_vault_and_a_rotate_hook_are_read_as_written() {
    let m = Manifest::parse("lifeboat.toml", &format!("{GOOD}{VAULT}")).unwrap();
    let vault = m.vault.expect("the [vault] section is read");
    assert_eq!(
        vault.destinations,
        vec![
            ".lifeboat/vault",
            "/mnt/other-disk/guestbook",
            "s3://my-bucket/guestbook?endpoint=https://s3.example.net&region=eu-1",
        ]
    );
    assert_eq!(vault.quorum, Some(2));
    assert_eq!(vault.segment_interval, Duration::from_millis(250));
    assert_eq!(vault.checkpoint_interval, Duration::from_secs(300));
    assert_eq!(
        m.credentials.rotate.as_deref(),
        Some("./rotate-credentials.sh")
    );
}

#[test]
fn a_vault_with_only_destinations_ships_every_second_to_all_of_them() {
    let m = Manifest::parse(
        "lifeboat.toml",
        &with_vault("destinations = [\"../backups/guestbook\"]\n"),
    )
    .unwrap();
    let vault = m.vault.unwrap();
    assert_eq!(vault.destinations, vec!["../backups/guestbook"]);
    assert_eq!(vault.quorum, None, "no quorum means every destination");
    assert_eq!(vault.segment_interval, Duration::from_millis(500));
    assert_eq!(vault.checkpoint_interval, Duration::from_secs(600));
    assert_eq!(m.credentials, CredentialsSpec::default());
}

#[test]
fn without_a_vault_section_nothing_is_captured() {
    let m = Manifest::parse("lifeboat.toml", GOOD).unwrap();
    assert_eq!(m.vault, None);
    assert_eq!(m.credentials.rotate, None);
}

#[test]
fn a_vault_without_destinations_says_what_to_add() {
    insta::assert_snapshot!(error_for(&with_vault("segment_interval = \"1s\"\n")));
}

#[test]
fn an_empty_list_of_destinations_is_refused() {
    insta::assert_snapshot!(error_for(&with_vault("destinations = []\n")));
}

#[test]
fn a_misspelt_vault_key_is_named_with_a_suggestion() {
    insta::assert_snapshot!(error_for(&with_vault(
        "destination = [\".lifeboat/vault\"]\n"
    )));
}

#[test]
fn unsupported_destination_schemes_say_which_are_supported() {
    insta::assert_snapshot!(error_for(&with_vault(
        "destinations = [\"gs://bucket/site\", \"file:///srv/backup\", \"s3:///no-bucket\", \"\"]\n"
    )));
}

#[test]
fn a_destination_listed_twice_is_refused() {
    insta::assert_snapshot!(error_for(&with_vault(
        "destinations = [\".lifeboat/vault\", \"./.lifeboat/vault/\", \"s3://b/site\", \"s3://b/site/\"]\n"
    )));
}

#[test]
fn a_quorum_above_the_number_of_destinations_is_refused() {
    insta::assert_snapshot!(error_for(&with_vault(
        "destinations = [\".lifeboat/vault\", \"s3://b/site\"]\nquorum = 3\n"
    )));
}

#[test]
fn a_zero_quorum_is_refused() {
    insta::assert_snapshot!(error_for(&with_vault(
        "destinations = [\".lifeboat/vault\"]\nquorum = 0\n"
    )));
}

#[test]
fn intervals_outside_their_range_are_refused() {
    insta::assert_snapshot!(error_for(&with_vault(
        "destinations = [\".lifeboat/vault\"]\nsegment_interval = \"10ms\"\ncheckpoint_interval = \"500ms\"\n"
    )));
}

#[test]
fn a_segment_interval_over_an_hour_is_refused() {
    insta::assert_snapshot!(error_for(&with_vault(
        "destinations = [\".lifeboat/vault\"]\nsegment_interval = \"2h\"\n"
    )));
}

#[test]
fn a_vault_inside_the_state_or_holding_it_is_refused() {
    insta::assert_snapshot!(error_for(&with_vault(
        "destinations = [\"data/uploads/backup\", \"data\", \"./data/guestbook.db\", \".\"]\n"
    )));
}

#[test]
fn an_empty_rotate_command_is_refused() {
    insta::assert_snapshot!(error_for(&format!(
        "{GOOD}\n[credentials]\nrotate = \" \"\n"
    )));
}

#[test]
fn a_state_path_inside_dot_lifeboat_or_the_site_dir_itself_is_refused() {
    let text = GOOD
        .replace("data/guestbook.db", ".lifeboat/states/x/guestbook.db\", \"")
        .replace("\"data/uploads\"", "\"data/uploads\", \".\"");
    insta::assert_snapshot!(error_for(&text));
}

#[test]
fn the_guestbook_demo_manifest_is_accepted() {
    let text = include_str!("../../../examples/guestbook/lifeboat.toml");
    let m = Manifest::parse("examples/guestbook/lifeboat.toml", text).unwrap();
    assert_eq!(m.vault.unwrap().destinations, vec![".lifeboat/vault"]);
    assert_eq!(
        m.credentials.rotate.as_deref(),
        Some("./rotate-credentials.sh")
    );
}

/// GOOD with more keys under `[proxy]`.
fn with_proxy_keys(keys: &str) -> String {
    GOOD.replace(
        "listen = \"127.0.0.1:8080\"\n",
        &format!("listen = \"127.0.0.1:8080\"\n{keys}"),
    )
}

#[test]
fn the_front_door_limits_and_trusted_proxies_are_read_as_written() {
    let text = with_proxy_keys(
        "send_timeout = \"30s\"\nbody_timeout = \"10s\"\nmax_connections = 10000\n\
         trusted_proxies = [\"10.0.0.5\", \"192.168.0.0/16\", \"2001:db8::/32\"]\n",
    )
    .replace(
        "path = \"/healthz\"",
        "path = \"/healthz\", host = \"example.com:8000\"",
    );
    let m = Manifest::parse("lifeboat.toml", &text).unwrap();
    assert_eq!(m.proxy.send_timeout, Duration::from_secs(30));
    assert_eq!(m.proxy.body_timeout, Duration::from_secs(10));
    assert_eq!(m.proxy.max_connections, 10000);
    let ranges: Vec<String> = m
        .proxy
        .trusted_proxies
        .iter()
        .map(|r| format!("{}/{}", r.addr, r.prefix_len))
        .collect();
    assert_eq!(ranges, ["10.0.0.5/32", "192.168.0.0/16", "2001:db8::/32"]);
    assert_eq!(
        m.processes["web"].health.host.as_deref(),
        Some("example.com:8000")
    );
}

#[test]
fn without_front_door_keys_clients_get_a_minute_and_4096_connections_and_nobody_is_trusted() {
    let m = Manifest::parse("lifeboat.toml", GOOD).unwrap();
    assert_eq!(m.proxy.send_timeout, Duration::from_secs(60));
    assert_eq!(m.proxy.body_timeout, Duration::from_secs(60));
    assert_eq!(m.proxy.max_connections, 4096);
    assert!(m.proxy.trusted_proxies.is_empty());
    assert_eq!(m.processes["web"].health.host, None);
}

#[test]
fn a_health_host_is_a_host_name_or_address_with_an_optional_port() {
    let host = |host: &str| {
        let text = GOOD.replace(
            "path = \"/healthz\"",
            &format!("path = \"/healthz\", host = {host:?}"),
        );
        Manifest::parse("lifeboat.toml", &text).is_ok()
    };
    for good in [
        "example.com",
        "example.com.",
        "www.example.com:8000",
        "localhost",
        "my_app.internal",
        "10.0.0.5",
        "10.0.0.5:80",
        "[2001:db8::1]",
        "[::1]:8080",
    ] {
        assert!(host(good), "{good:?} is accepted");
    }
    for bad in [
        "",
        "http://example.com",
        "example.com/path",
        "example.com:0",
        "example.com:99999",
        "example.com:",
        "exa mple.com",
        "-example.com",
        "a..b",
        "2001:db8::1",
        "[2001:db8::1",
        "[nothing]",
    ] {
        assert!(!host(bad), "{bad:?} is refused");
    }
}

#[test]
fn a_health_host_that_is_a_url_or_has_no_usable_port_is_refused() {
    let text = GOOD.replace(
        "path = \"/healthz\"",
        "path = \"/healthz\", host = \"https://example.com\"",
    );
    let text = format!(
        "{text}\n[processes.api]\ncommand = \"./api\"\nhealth = {{ host = \"example.com:http\" }}\n"
    );
    insta::assert_snapshot!(error_for(&text));
}

#[test]
fn front_door_limits_out_of_range_are_refused() {
    insta::assert_snapshot!(error_for(&with_proxy_keys(
        "send_timeout = \"0s\"\nbody_timeout = \"60\"\nmax_connections = 0\n"
    )));
}

#[test]
fn a_trusted_proxy_that_is_no_address_or_block_is_refused() {
    insta::assert_snapshot!(error_for(&with_proxy_keys(
        "trusted_proxies = [\"10.0.0.5\", \"lb.example.com\", \"10.0.0.0/33\", \"::/129\"]\n"
    )));
}

// ---- resource limits ------------------------------------------------------------------------

fn with_web_keys(keys: &str) -> String {
    GOOD.replace("replicas = 3\n", &format!("replicas = 3\n{keys}"))
}

#[test]
fn resource_limits_are_read_in_the_units_written() {
    let m = Manifest::parse(
        "lifeboat.toml",
        &with_web_keys("memory = \"512MiB\"\ncpu = 1.5\npids = 200\n"),
    )
    .unwrap();
    let limits = m.processes["web"].limits;
    assert_eq!(limits.memory, Some(512 << 20));
    assert_eq!(limits.cpu_millis, Some(1500));
    assert_eq!(limits.pids, 200);
    let whole_cores = Manifest::parse("lifeboat.toml", &with_web_keys("cpu = 2\n")).unwrap();
    assert_eq!(whole_cores.processes["web"].limits.cpu_millis, Some(2000));
}

#[test]
fn without_limits_memory_and_cpu_are_free_and_a_fork_bomb_is_still_capped() {
    let m = Manifest::parse("lifeboat.toml", GOOD).unwrap();
    let limits = m.processes["web"].limits;
    assert_eq!(limits.memory, None);
    assert_eq!(limits.cpu_millis, None);
    assert_eq!(limits.pids, lifeboat_core::manifest::DEFAULT_PIDS);
}

#[test]
fn resource_limits_out_of_range_or_without_a_unit_are_refused() {
    insta::assert_snapshot!(error_for(&with_web_keys(
        "memory = \"512\"\ncpu = 0\npids = 0\n[processes.worker]\ncommand = \"./w\"\nmemory = \"512KiB\"\ncpu = -1.5\npids = 5000000\n"
    )));
}

#[test]
fn a_memory_limit_written_as_a_number_names_the_type_to_write() {
    insta::assert_snapshot!(error_for(&with_web_keys("memory = 536870912\n")));
}

#[test]
fn a_cpu_limit_written_as_a_string_names_the_type_to_write() {
    insta::assert_snapshot!(error_for(&with_web_keys("cpu = \"1.5\"\n")));
}

#[test]
fn a_mariadb_database_is_part_of_the_state_with_its_user_and_data_dir() {
    let text = GOOD.replace(
        "dirs = [\"data/uploads\"]",
        "dirs = [\"data/uploads\"]\nmariadb = { database = \"wordpress\" }",
    );
    let m = Manifest::parse("lifeboat.toml", &text).unwrap();
    let db = m.state.mariadb.expect("mariadb is declared");
    assert_eq!(db.database, "wordpress");
    assert_eq!(
        db.user, "wordpress",
        "the user defaults to the database's name"
    );
    assert_eq!(db.dir, std::path::PathBuf::from("mariadb"));
}

#[test]
fn a_bad_mariadb_name_user_or_dir_is_refused_where_it_is_written() {
    let text = GOOD.replace(
        "dirs = [\"data/uploads\"]",
        "dirs = [\"data/uploads\"]\nmariadb = { database = \"word-press\", user = \"root\", dir = \"data/uploads/db\" }",
    );
    let e = error_for(&text);
    assert!(
        e.contains("lifeboat.toml:12:24: state.mariadb.database"),
        "{e}"
    );
    assert!(e.contains("state.mariadb.database"), "{e}");
    assert!(e.contains("state.mariadb.user"), "{e}");
    assert!(e.contains("not `root`"), "{e}");
    assert!(e.contains("state.mariadb.dir"), "{e}");
    assert!(e.contains("overlaps"), "{e}");
    let text = GOOD.replace(
        "dirs = [\"data/uploads\"]",
        "mariadb = { user = \"wp\", dir = \".lifeboat/db\" }",
    );
    let e = error_for(&text);
    assert!(e.contains("has no name"), "{e}");
    assert!(e.contains("inside .lifeboat"), "{e}");
}

#[test]
fn a_stop_signal_is_read_with_or_without_sig_and_defaults_to_sigterm() {
    let m = Manifest::parse("lifeboat.toml", GOOD).unwrap();
    assert_eq!(m.processes["web"].stop_signal, "SIGTERM");
    for written in ["SIGWINCH", "WINCH", "sigwinch"] {
        let text = GOOD.replace(
            "replicas = 3",
            &format!("replicas = 3\nstop_signal = \"{written}\""),
        );
        let m = Manifest::parse("lifeboat.toml", &text).unwrap();
        assert_eq!(m.processes["web"].stop_signal, "SIGWINCH", "{written}");
    }
}

#[test]
fn a_stop_signal_that_cannot_ask_a_process_to_finish_is_refused() {
    let text = GOOD.replace("replicas = 3", "replicas = 3\nstop_signal = \"SIGKILL\"");
    insta::assert_snapshot!(error_for(&text));
}
