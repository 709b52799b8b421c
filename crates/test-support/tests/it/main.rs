//! Integration tests for `test-support`, one module per area, against a real `redis-server`.

mod history;
mod proxy;
mod server;
mod topology;
mod wait;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;

/// Sends one command as a RESP array on a fresh connection and returns the reply: a simple
/// string, error or integer as its line without the CRLF (`+OK`, `-NOAUTH ...`, `:1`), a bulk
/// string as its payload, and a nil bulk string as `(nil)`.
pub fn command(port: u16, args: &[&str]) -> String {
    let mut request = format!("*{}\r\n", args.len());
    for arg in args {
        request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
    }
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to redis-server");
    stream
        .write_all(request.as_bytes())
        .expect("send a command");
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).expect("read a reply");
    let line = line.trim_end_matches("\r\n");
    match line.strip_prefix('$') {
        Some("-1") => "(nil)".to_owned(),
        Some(len) => {
            let len: usize = len.parse().expect("a bulk string length");
            let mut payload = vec![0; len + 2];
            reader.read_exact(&mut payload).expect("read a bulk string");
            payload.truncate(len);
            String::from_utf8(payload).expect("a UTF-8 payload")
        }
        None => line.to_owned(),
    }
}
