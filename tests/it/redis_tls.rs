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
