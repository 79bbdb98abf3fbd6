//! The etcd client against a real etcd (3.4's JSON gateway).

mod common;

use std::time::Duration;

use common::gate::{Gate, Mode};
use common::{EtcdCluster, prefix};
use lifeboat_cluster::etcd::{Compare, KeepAlive, Op, OpResult, Txn, WatchEvent};
use lifeboat_cluster::{EtcdClient, EtcdConfig, EtcdError};

#[tokio::test]
async fn keys_are_written_read_listed_and_deleted() {
    let etcd = EtcdCluster::single();
    let c = etcd.client();
    let p = prefix("kv");
    let rev = c
        .put(format!("{p}/a").as_bytes(), b"1", None)
        .await
        .unwrap();
    c.put(format!("{p}/b").as_bytes(), b"2", None)
        .await
        .unwrap();
    c.put(format!("{p}c").as_bytes(), b"not under p/", None)
        .await
        .unwrap();
    let a = c.get(format!("{p}/a").as_bytes()).await.unwrap();
    assert_eq!(a.kvs.len(), 1);
    assert_eq!(a.kvs[0].value, b"1");
    assert_eq!(a.kvs[0].create_revision, rev);
    assert_eq!(a.kvs[0].lease, None);
    let all = c.get_prefix(format!("{p}/").as_bytes()).await.unwrap();
    let values: Vec<&[u8]> = all.kvs.iter().map(|kv| kv.value.as_slice()).collect();
    assert_eq!(values, vec![b"1".as_slice(), b"2".as_slice()]);
    assert_eq!(c.delete(format!("{p}/a").as_bytes()).await.unwrap(), 1);
    assert!(
        c.get(format!("{p}/a").as_bytes())
            .await
            .unwrap()
            .kvs
            .is_empty()
    );
}

#[tokio::test]
async fn a_create_if_absent_transaction_succeeds_once() {
    let etcd = EtcdCluster::single();
    let c = etcd.client();
    let key = format!("{}/once", prefix("txn")).into_bytes();
    let create = |v: &'static [u8]| {
        Txn::new()
            .when(Compare::create_revision(key.clone(), 0))
            .and_then(Op::put(key.clone(), v, None))
            .or_else(Op::get(key.clone()))
    };
    let first = c.txn(create(b"first")).await.unwrap();
    assert!(first.succeeded);
    assert_eq!(first.results, vec![OpResult::Put]);
    let second = c.txn(create(b"second")).await.unwrap();
    assert!(!second.succeeded);
    let OpResult::Get(kvs) = &second.results[0] else {
        panic!("the failure branch reads the key")
    };
    assert_eq!(kvs[0].value, b"first");
    // The created key's revision is the revision of the transaction that created it.
    assert_eq!(kvs[0].create_revision, first.revision);
}

#[tokio::test]
async fn a_lease_keeps_its_keys_until_it_is_revoked() {
    let etcd = EtcdCluster::single();
    let c = etcd.client();
    // etcd raises a 1 s TTL to its minimum, 2 s with the default election timeout.
    let lease = c.lease_grant(Duration::from_secs(1)).await.unwrap();
    assert_eq!(lease.ttl, Duration::from_secs(2));
    let key = format!("{}/leased", prefix("lease")).into_bytes();
    c.put(&key, b"v", Some(lease.id)).await.unwrap();
    assert_eq!(c.get(&key).await.unwrap().kvs[0].lease, Some(lease.id));
    let renewed = c
        .lease_keepalive(lease.id, Duration::from_millis(500))
        .await
        .unwrap();
    assert_eq!(
        renewed,
        KeepAlive::Alive {
            ttl: Duration::from_secs(2)
        }
    );
    c.lease_revoke(lease.id).await.unwrap();
    assert!(c.get(&key).await.unwrap().kvs.is_empty());
    let after = c
        .lease_keepalive(lease.id, Duration::from_millis(500))
        .await
        .unwrap();
    assert_eq!(after, KeepAlive::Gone);
    // Revoking again is not an error: the lease is gone either way.
    c.lease_revoke(lease.id).await.unwrap();
    // Writing under a lease that is gone is refused, and says why.
    let e = c.put(&key, b"v", Some(lease.id)).await.unwrap_err();
    assert!(e.is_lease_not_found(), "{e}");
}

#[tokio::test]
async fn a_renewal_moves_past_a_dead_and_a_silent_endpoint_to_a_live_one() {
    let etcd = EtcdCluster::single();
    let dead = Gate::open(etcd.members[0].client_port).await;
    dead.set(Mode::Closed);
    let silent = Gate::open(etcd.members[0].client_port).await;
    silent.set(Mode::Blackhole);
    let mut config = EtcdConfig::new([dead.url(), silent.url(), etcd.members[0].url()]);
    config.request_timeout = Duration::from_millis(150);
    let c = EtcdClient::new(config).unwrap();
    let lease = etcd
        .client()
        .lease_grant(Duration::from_secs(2))
        .await
        .unwrap();
    let started = tokio::time::Instant::now();
    let r = c
        .lease_keepalive(lease.id, Duration::from_millis(500))
        .await
        .unwrap();
    assert!(matches!(r, KeepAlive::Alive { .. }));
    assert!(started.elapsed() < Duration::from_millis(500));
    // The client now starts with the endpoint that answered.
    let started = tokio::time::Instant::now();
    c.lease_keepalive(lease.id, Duration::from_millis(500))
        .await
        .unwrap();
    assert!(started.elapsed() < Duration::from_millis(100));
}

#[tokio::test]
async fn when_no_endpoint_answers_the_error_names_each_and_what_to_do() {
    let etcd = EtcdCluster::single();
    let dead = Gate::open(etcd.members[0].client_port).await;
    dead.set(Mode::Closed);
    let silent = Gate::open(etcd.members[0].client_port).await;
    silent.set(Mode::Blackhole);
    let mut config = EtcdConfig::new([dead.url(), silent.url()]);
    config.request_timeout = Duration::from_millis(100);
    let c = EtcdClient::new(config).unwrap();
    let e = c.get(b"/x").await.unwrap_err();
    assert!(e.is_unreachable());
    let EtcdError::Unreachable { attempts, .. } = &e else {
        panic!("{e}")
    };
    assert_eq!(attempts.len(), 2);
    let text = e.to_string();
    assert!(
        text.starts_with("could not read a key: no etcd endpoint answered ("),
        "{text}"
    );
    assert!(text.contains(&format!("{}: ", dead.url())), "{text}");
    assert!(
        text.contains(&format!("{}: no answer within 100ms", silent.url())),
        "{text}"
    );
    assert!(
        text.ends_with("check that etcd runs, that a majority of its members is up, and that this node can reach them"),
        "{text}"
    );
}

#[tokio::test]
async fn a_watch_reports_puts_and_deletes_in_order() {
    let etcd = EtcdCluster::single();
    let c = etcd.client();
    let p = format!("{}/", prefix("watch"));
    let mut w = c.watch(p.as_bytes(), true, 0).await.unwrap();
    let key = format!("{p}k").into_bytes();
    let put_rev = c.put(&key, b"1", None).await.unwrap();
    c.delete(&key).await.unwrap();
    let mut events = Vec::new();
    while events.len() < 2 {
        let batch = tokio::time::timeout(Duration::from_secs(5), w.next())
            .await
            .expect("the watch delivers")
            .unwrap();
        events.extend(batch.events);
    }
    let WatchEvent::Put(kv) = &events[0] else {
        panic!("{events:?}")
    };
    assert_eq!(
        (kv.value.as_slice(), kv.mod_revision),
        (b"1".as_slice(), put_rev)
    );
    let WatchEvent::Delete(kv) = &events[1] else {
        panic!("{events:?}")
    };
    assert_eq!(kv.key, key);
    assert_eq!(kv.mod_revision, put_rev + 1);
}

#[tokio::test]
async fn a_watch_ends_with_an_error_when_its_member_goes_away() {
    let mut etcd = EtcdCluster::single();
    let c = etcd.client();
    let mut w = c.watch(b"/x", false, 0).await.unwrap();
    etcd.kill(0);
    let e = tokio::time::timeout(Duration::from_secs(5), w.next())
        .await
        .expect("a dead member ends the watch")
        .unwrap_err();
    assert!(matches!(e, EtcdError::WatchEnded { .. }), "{e}");
}

/// Certificates made with `openssl`: a CA, etcd's server certificate for 127.0.0.1, and a
/// client certificate; each written as PEM into `dir`.
fn make_certificates(dir: &std::path::Path) {
    let run = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl is installed (Debian's openssl package)");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509"];
    ca.extend(ec);
    ca.extend([
        "-keyout",
        "ca-key.pem",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=test etcd CA",
    ]);
    run(&ca);
    for (name, usage, san) in [
        (
            "server",
            "serverAuth,clientAuth",
            "subjectAltName=IP:127.0.0.1",
        ),
        ("client", "clientAuth", "subjectAltName=DNS:node-a"),
        ("other", "clientAuth", "subjectAltName=DNS:intruder"),
    ] {
        let (key, csr, pem, ext) = (
            format!("{name}-key.pem"),
            format!("{name}.csr"),
            format!("{name}.pem"),
            format!("{name}.ext"),
        );
        let mut req = vec!["req"];
        req.extend(ec);
        let subj = format!("/CN={name}");
        req.extend(["-keyout", &key, "-out", &csr, "-subj", &subj]);
        run(&req);
        std::fs::write(dir.join(&ext), format!("{san}\nextendedKeyUsage={usage}\n")).unwrap();
        // The intruder's certificate is signed by a CA of its own.
        let (ca, ca_key) = if name == "other" {
            let mut own = vec!["req", "-x509"];
            own.extend(ec);
            own.extend([
                "-keyout",
                "other-ca-key.pem",
                "-out",
                "other-ca.pem",
                "-days",
                "2",
                "-subj",
                "/CN=other CA",
            ]);
            run(&own);
            ("other-ca.pem", "other-ca-key.pem")
        } else {
            ("ca.pem", "ca-key.pem")
        };
        run(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            ca,
            "-CAkey",
            ca_key,
            "-CAcreateserial",
            "-out",
            &pem,
            "-days",
            "2",
            "-extfile",
            &ext,
        ]);
    }
}

/// etcd serving TLS and asking for client certificates (`--client-cert-auth`): a client with
/// the CA and its certificate reads and writes; one without a certificate, with a certificate
/// of another CA, or without the CA (the system's roots do not know it) is refused, each
/// with an error that names TLS.
#[tokio::test]
async fn tls_with_client_certificates_admits_only_the_holder_of_a_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    make_certificates(d);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let peer = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("https://127.0.0.1:{port}");
    let log = std::fs::File::create(d.join("etcd.log")).unwrap();
    let mut etcd = std::process::Command::new(common::etcd_binary())
        .arg(format!("--data-dir={}", d.join("data").display()))
        .arg(format!("--listen-client-urls={url}"))
        .arg(format!("--advertise-client-urls={url}"))
        .arg(format!("--listen-peer-urls=http://127.0.0.1:{peer}"))
        .arg(format!(
            "--initial-advertise-peer-urls=http://127.0.0.1:{peer}"
        ))
        .arg(format!("--initial-cluster=default=http://127.0.0.1:{peer}"))
        .arg(format!("--cert-file={}", d.join("server.pem").display()))
        .arg(format!("--key-file={}", d.join("server-key.pem").display()))
        .arg(format!("--trusted-ca-file={}", d.join("ca.pem").display()))
        .arg("--client-cert-auth")
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let read = |f: &str| std::fs::read(d.join(f)).unwrap();
    let identity = |name: &str| {
        let mut pem = read(&format!("{name}.pem"));
        pem.extend(read(&format!("{name}-key.pem")));
        pem
    };
    let client_with = |ca: Option<Vec<u8>>, identity: Option<Vec<u8>>| {
        let mut config = EtcdConfig::new([url.clone()]);
        config.request_timeout = Duration::from_secs(2);
        config.connect_timeout = Duration::from_secs(1);
        config.tls = Some(lifeboat_cluster::EtcdTls {
            ca_pem: ca,
            identity_pem: identity,
        });
        EtcdClient::new(config).unwrap()
    };
    let good = client_with(Some(read("ca.pem")), Some(identity("client")));
    let key = format!("{}/tls", prefix("tls")).into_bytes();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        match good.put(&key, b"over tls", None).await {
            Ok(_) => break,
            Err(e) if std::time::Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!(
                "{e}\n{}",
                std::fs::read_to_string(d.join("etcd.log")).unwrap_or_default()
            ),
        }
    }
    assert_eq!(good.get(&key).await.unwrap().kvs[0].value, b"over tls");

    for (who, client) in [
        (
            "no client certificate",
            client_with(Some(read("ca.pem")), None),
        ),
        (
            "a certificate of another CA",
            client_with(Some(read("ca.pem")), Some(identity("other"))),
        ),
        (
            "no CA (the system's roots)",
            client_with(None, Some(identity("client"))),
        ),
    ] {
        // Refused during the handshake: with TLS 1.3 the client may see the server's alert
        // (BadCertificate, UnknownIssuer) or only the connection closing after it.
        let err = client.get(&key).await.unwrap_err().to_string();
        eprintln!("{who}: {err}");
        assert!(err.contains(&url), "{who}: {err}");
        assert!(!err.contains("over tls"), "{who}: {err}");
    }
    // A CA file that is not PEM is said so before anything is sent.
    let mut config = EtcdConfig::new([url.clone()]);
    config.tls = Some(lifeboat_cluster::EtcdTls {
        ca_pem: Some(b"not a certificate".to_vec()),
        identity_pem: None,
    });
    let err = EtcdClient::new(config).unwrap_err().to_string();
    assert!(err.contains("etcd_ca"), "{err}");
    let _ = etcd.kill();
    let _ = etcd.wait();
}
