//! `rediss://` with a private CA (feature `tls`), against a redis-server listening with TLS.

use std::net::TcpListener;
use std::path::Path;
use std::process::Command;

use cache_core::{CacheKey, L2Store, L2Write};
use cache_redis::{RedisConfig, RedisL2};
use test_support::RedisServer;

/// A CA and a server certificate for 127.0.0.1, made with the `openssl` command.
fn make_certificates(dir: &Path) {
    let run = |args: &[&str]| {
        let out = Command::new("openssl").args(args).current_dir(dir).output().unwrap_or_else(|e| {
            panic!("openssl is needed for the TLS test ({e}); `cargo xtask test` installs it, or: sudo apt-get install -y openssl")
        });
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "1",
        "-subj",
        "/CN=edge-cache test CA",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.crt",
        "-days",
        "1",
        "-extfile",
        "ext.cnf",
    ]);
    // A client certificate from the same CA, for mutual TLS.
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "client.key",
        "-out",
        "client.csr",
        "-subj",
        "/CN=edge node",
    ]);
    std::fs::write(dir.join("client.cnf"), "extendedKeyUsage=clientAuth\n").unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "client.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "client.crt",
        "-days",
        "1",
        "-extfile",
        "client.cnf",
    ]);
}

#[tokio::test]
async fn rediss_urls_work_with_the_fleets_own_ca_and_fail_clearly_without_it() {
    let dir = tempfile::tempdir().unwrap();
    make_certificates(dir.path());
    let path = |name: &str| dir.path().join(name).to_string_lossy().into_owned();
    let tls_port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
        .to_string();
    let (cert, key, ca) = (path("server.crt"), path("server.key"), path("ca.crt"));
    let server = RedisServer::start_with_args(&[
        "--tls-port",
        &tls_port,
        "--tls-cert-file",
        &cert,
        "--tls-key-file",
        &key,
        "--tls-ca-cert-file",
        &ca,
        "--tls-auth-clients",
        "no",
    ]);
    let url = format!("rediss://127.0.0.1:{tls_port}/0");
    let ca_pem = std::fs::read(dir.path().join("ca.crt")).unwrap();

    let l2 = RedisL2::connect(&RedisConfig::new(&url).tls_root_certificate(ca_pem))
        .await
        .unwrap();
    let k = CacheKey::derive("gpu_avail", &serde_json::json!({"gpu_id": "g-1"})).unwrap();
    l2.set(L2Write::new(
        k.clone(),
        b"over tls".to_vec(),
        std::time::Duration::from_secs(10),
    ))
    .await
    .unwrap();
    assert_eq!(l2.get(&k).await.unwrap().unwrap().bytes, b"over tls");

    // The public roots do not trust a private CA: a clear L2 error, not a hang.
    let err = RedisL2::connect(&RedisConfig::new(&url)).await.unwrap_err();
    assert_eq!(err.kind(), cache_core::ErrorKind::L2, "{err}");
    drop(server);
}

#[tokio::test]
async fn mutual_tls_presents_the_nodes_certificate_and_fails_clearly_without_it() {
    let dir = tempfile::tempdir().unwrap();
    make_certificates(dir.path());
    let path = |name: &str| dir.path().join(name).to_string_lossy().into_owned();
    let read = |name: &str| std::fs::read(dir.path().join(name)).unwrap();
    let tls_port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
        .to_string();
    let server = RedisServer::start_with_args(&[
        "--tls-port",
        &tls_port,
        "--tls-cert-file",
        &path("server.crt"),
        "--tls-key-file",
        &path("server.key"),
        "--tls-ca-cert-file",
        &path("ca.crt"),
        "--tls-auth-clients",
        "yes",
    ]);
    let url = format!("rediss://127.0.0.1:{tls_port}/0");
    let trusted = RedisConfig::new(&url).tls_root_certificate(read("ca.crt"));

    // Without a certificate of its own, the server refuses the node: a clear L2 error.
    let err = RedisL2::connect(&trusted).await.err().map(|e| e.kind());
    assert_eq!(err, Some(cache_core::ErrorKind::L2));

    let with_identity = trusted
        .clone()
        .tls_client_certificate(read("client.crt"), read("client.key"));
    let shown = format!("{with_identity:?}");
    let key_text = String::from_utf8(read("client.key")).unwrap();
    let key_line = key_text.lines().nth(1).unwrap();
    assert!(
        !shown.contains(key_line),
        "the client key shows in Debug: {shown}"
    );
    let l2 = RedisL2::connect(&with_identity).await.unwrap();
    let k = CacheKey::derive("gpu_avail", &serde_json::json!({"gpu_id": "g-2"})).unwrap();
    l2.set(L2Write::new(
        k.clone(),
        b"mutual".to_vec(),
        std::time::Duration::from_secs(10),
    ))
    .await
    .unwrap();
    assert_eq!(l2.get(&k).await.unwrap().unwrap().bytes, b"mutual");
    drop(server);
}
