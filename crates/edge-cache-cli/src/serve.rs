//! `serve`: a long-lived edge node driven by one command per line on stdin, answering each with
//! exactly one JSON line on stdout. The fleet tests run three of these as separate processes;
//! operators can use it to watch a node's counters while they poke at it.

use std::net::SocketAddr;
use std::time::Duration;

use cache_core::Namespaces;
use cache_edge::{EdgeCache, SetOptions};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use crate::fail::{print_line, CliError, Outcome};
use crate::node::{self, Target};
use crate::notify::{self, NotifyFields, Style};
use crate::render;

/// The commands, for the error an unknown one gets.
const COMMANDS: &str = "get, set, invalidate, notify, stats, health, quit";

/// Announces readiness, then answers commands until `quit` or the end of stdin, then shuts the
/// node down.
///
/// # Errors
/// Stdout cannot be written (a closed stdout ends the node quietly).
pub async fn run(
    target: &Target,
    node: EdgeCache,
    namespaces: Namespaces,
    metrics: Option<SocketAddr>,
) -> Result<Outcome, CliError> {
    let mut ready = json!({
        "ready": true,
        "node_id": node.node_id(),
        "channel": target.channel,
        "redis": cache_redis::redact(&target.url),
    });
    if let Some(addr) = metrics {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| CliError::new(format!("cannot listen on {addr} for metrics: {e}")))?;
        let bound = listener
            .local_addr()
            .map_err(|e| CliError::new(format!("metrics listener: {e}")))?;
        ready["metrics"] = json!(format!("http://{bound}/metrics"));
        tokio::spawn(serve_metrics(listener, node.clone()));
    }
    print_line(&ready.to_string())?;
    let mut lines = stdin_lines();
    let served = async {
        while let Some(line) = lines.recv().await {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (reply, quit) = answer(target, &node, &namespaces, line).await;
            print_line(&reply.to_string())?;
            if quit {
                break;
            }
        }
        Ok::<_, CliError>(())
    }
    .await;
    node.shutdown().await;
    served?;
    Ok(Outcome::Done)
}

/// Lines of stdin, read by a thread of their own: a blocking read parked in tokio's blocking
/// pool would hold up the runtime's shutdown until another line came, while a detached thread
/// ends with the process.
fn stdin_lines() -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel(16);
    std::thread::spawn(move || {
        for line in std::io::stdin().lines() {
            // A read error ends input like the end of the stream does.
            let Ok(line) = line else { break };
            if tx.blocking_send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// The reply to one command line, and whether it was `quit`.
async fn answer(
    target: &Target,
    node: &EdgeCache,
    namespaces: &Namespaces,
    line: &str,
) -> (Value, bool) {
    let (command, rest) = word(line);
    let result = match command {
        "get" => get(node, namespaces, rest).await,
        "set" => set(node, namespaces, rest).await,
        "invalidate" => invalidate(node, namespaces, rest).await,
        "notify" => notify(node, rest).await,
        "stats" => Ok(json!({"value": render::stats_json(&node.stats())})),
        "health" => Ok(json!({"value": render::health_json(&node.health().await)})),
        "quit" => Ok(json!({})),
        other => Err(CliError::new(format!(
            "unknown command {other:?}; commands: {COMMANDS}"
        ))),
    };
    let reply = match result {
        Ok(Value::Object(mut fields)) => {
            fields.insert("ok".into(), Value::Bool(true));
            Value::Object(fields)
        }
        Ok(other) => json!({"ok": true, "value": other}),
        Err(e) => json!({"ok": false, "error": e.display_for(&target.url)}),
    };
    (reply, command == "quit")
}

async fn get(node: &EdgeCache, namespaces: &Namespaces, rest: &str) -> Result<Value, CliError> {
    let (namespace, rest) = word(rest);
    node::check_namespace(namespaces, namespace)?;
    let params = one_json("PARAMS_JSON", rest)?;
    Ok(match node.get::<Value, _>(namespace, &params).await? {
        Some(value) => json!({"hit": true, "value": *value}),
        None => json!({"hit": false, "value": null}),
    })
}

async fn set(node: &EdgeCache, namespaces: &Namespaces, rest: &str) -> Result<Value, CliError> {
    let (namespace, rest) = word(rest);
    node::check_namespace(namespaces, namespace)?;
    let mut values = serde_json::Deserializer::from_str(rest).into_iter::<Value>();
    let mut next = |name: &str| match values.next() {
        Some(Ok(value)) => Ok(value),
        Some(Err(e)) => Err(CliError::new(node::bad_json(name, rest, &e))),
        None => Err(CliError::new(format!("missing {name}"))),
    };
    let params = next("PARAMS_JSON")?;
    let value = next("VALUE_JSON")?;
    let mut options = SetOptions::new();
    for (key, text) in pairs(&rest[values.byte_offset()..])? {
        match key {
            "ttl" => {
                let secs = text.parse::<u64>().ok().filter(|s| *s > 0).ok_or_else(|| {
                    CliError::new(format!(
                        "ttl={text} is not a whole number of seconds above 0"
                    ))
                })?;
                options = options.ttl(Duration::from_secs(secs));
            }
            "tag" => options = options.tag(text),
            other => {
                return Err(CliError::new(format!(
                    "unknown option {other}=; set takes ttl=SECS and tag=T"
                )))
            }
        }
    }
    node.set_with(namespace, &params, &value, options).await?;
    Ok(json!({}))
}

async fn invalidate(
    node: &EdgeCache,
    namespaces: &Namespaces,
    rest: &str,
) -> Result<Value, CliError> {
    let (namespace, rest) = word(rest);
    node::check_namespace(namespaces, namespace)?;
    let (mut resource, mut reason) = (None, None);
    for (key, text) in pairs(rest)? {
        match key {
            "resource" => resource = Some(text),
            "reason" => reason = Some(text),
            other => {
                return Err(CliError::new(format!(
                    "unknown option {other}=; invalidate takes resource=R or reason=TEXT"
                )))
            }
        }
    }
    match (resource, reason) {
        (Some(_), Some(_)) => {
            return Err(CliError::new(
                "reason= applies to namespace invalidation only, not with resource=",
            ))
        }
        (Some(resource), None) => node.invalidate_resource(namespace, resource).await?,
        (None, reason) => {
            let reason = reason.unwrap_or(node::DEFAULT_REASON);
            node.invalidate_namespace(namespace, reason).await?;
        }
    }
    Ok(json!({}))
}

async fn notify(node: &EdgeCache, rest: &str) -> Result<Value, CliError> {
    let (event, rest) = word(rest);
    if event.is_empty() {
        return Err(CliError::new(
            "notify needs an event type, e.g. notify booking-created booking=b-1 gpu=g-42",
        ));
    }
    let mut fields = NotifyFields::default();
    for (key, text) in pairs(rest)? {
        fields.set_pair(key, text)?;
    }
    let notification = notify::notification(event, &fields, Style::Pairs)?;
    let event = node.notify(notification).await?;
    let published: Value = serde_json::from_slice(&event.encode())
        .map_err(|e| CliError::new(format!("cannot show the event: {e}")))?;
    Ok(json!({"value": published}))
}

/// The first whitespace-separated word of `text` and what follows it.
fn word(text: &str) -> (&str, &str) {
    let text = text.trim_start();
    match text.find(char::is_whitespace) {
        Some(end) => (&text[..end], &text[end..]),
        None => (text, ""),
    }
}

/// `key=value` words. Values cannot hold spaces: this is a debugging protocol, not a shell.
fn pairs(text: &str) -> Result<Vec<(&str, &str)>, CliError> {
    text.split_whitespace()
        .map(|pair| {
            pair.split_once('=')
                .ok_or_else(|| CliError::new(format!("expected key=value, got {pair:?}")))
        })
        .collect()
}

/// Exactly one JSON value in `text`, named `name` in errors.
fn one_json(name: &str, text: &str) -> Result<Value, CliError> {
    if text.trim().is_empty() {
        return Err(CliError::new(format!("missing {name}")));
    }
    serde_json::from_str(text).map_err(|e| CliError::new(node::bad_json(name, text.trim(), &e)))
}

/// Answers scrapes: `GET /metrics` gets the node's metrics, anything else a 404. Each
/// connection has its own task and five seconds to send its request.
async fn serve_metrics(listener: TcpListener, node: EdgeCache) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let node = node.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(5), scrape(stream, &node)).await;
        });
    }
}

/// One HTTP exchange: the request head (at most 8 KiB), then the answer, then close.
async fn scrape(mut stream: TcpStream, node: &EdgeCache) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 8 * 1024 {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let (status, content_type, body) = if head.starts_with(b"GET /metrics ") {
        (
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            node.prometheus().await,
        )
    } else {
        (
            "404 Not Found",
            "text/plain; charset=utf-8",
            "only GET /metrics is served here\n".to_owned(),
        )
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_pairs_and_json_split_as_documented() {
        assert_eq!(
            word("  get gpu_pricing {\"a\": 1}"),
            ("get", " gpu_pricing {\"a\": 1}")
        );
        assert_eq!(word("stats"), ("stats", ""));
        assert_eq!(
            pairs(" booking=bk-1 gpu=g-42 ").unwrap(),
            vec![("booking", "bk-1"), ("gpu", "g-42")]
        );
        assert!(pairs("booking").is_err());
        assert_eq!(
            one_json("P", " {\"a\": [1, 2]} ").unwrap(),
            json!({"a": [1, 2]})
        );
        let err = one_json("PARAMS_JSON", "{\"a\": 1} trailing").unwrap_err();
        assert!(
            err.to_string().starts_with("PARAMS_JSON is not valid JSON"),
            "{err}"
        );
        assert_eq!(one_json("P", "  ").unwrap_err().to_string(), "missing P");
    }
}
