//! Clients that send slowly cannot hold the server's connections: headers
//! trickled past `--header-read-timeout` close the connection, a body
//! stalled past `--body-read-timeout` is answered 408. Driven over raw TCP
//! sockets, as a slowloris client would.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::Server;
use serde_json::Value;

fn connect(server: &Server) -> TcpStream {
    let addr = server.base.strip_prefix("http://").unwrap();
    let stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
}

/// What the server sent until it closed the connection; `None` if it was
/// still open after 10 s.
fn read_until_closed(stream: &mut TcpStream) -> Option<Vec<u8>> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return Some(got),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Some(got),
            Err(_) => return None,
        }
    }
}

#[test]
fn a_client_trickling_its_headers_is_cut_off() {
    let server = Server::start(&["--header-read-timeout", "1"]);
    let mut stream = connect(&server);
    let started = Instant::now();
    stream
        .write_all(b"POST /v1/completions HTTP/1.1\r\nHost: localhost\r\nContent-Ty")
        .unwrap();
    let got = read_until_closed(&mut stream).expect("the server closes the connection");
    let waited = started.elapsed();
    assert!(got.is_empty(), "no request, no answer: {got:?}");
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(5),
        "closed after {waited:?}"
    );
    // The server goes on serving others.
    let mut other = connect(&server);
    other
        .write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .unwrap();
    let answer = read_until_closed(&mut other).unwrap();
    assert!(answer.starts_with(b"HTTP/1.1 200"), "{answer:?}");
}

#[test]
fn a_client_trickling_a_byte_at_a_time_is_cut_off_as_well() {
    // The deadline is for the whole head, not renewed by each byte.
    let server = Server::start(&["--header-read-timeout", "1"]);
    let mut stream = connect(&server);
    let started = Instant::now();
    let head = b"GET /health HTTP/1.1\r\nHost: localhost\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaa";
    let cut = head.iter().any(|byte| {
        std::thread::sleep(Duration::from_millis(200));
        stream.write_all(&[*byte]).is_err()
    });
    let waited = started.elapsed();
    assert!(cut, "the connection took every byte for {waited:?}");
    assert!(waited < Duration::from_secs(4), "cut after {waited:?}");
}

#[test]
fn a_stalled_body_is_answered_408() {
    let server = Server::start(&["--body-read-timeout", "1"]);
    let mut stream = connect(&server);
    let started = Instant::now();
    stream
        .write_all(
            b"POST /v1/completions HTTP/1.1\r\nHost: localhost\r\n\
              Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"prompt\": \"he",
        )
        .unwrap();
    let got = read_until_closed(&mut stream).expect("the server answers and closes");
    let waited = started.elapsed();
    assert!(waited < Duration::from_secs(5), "answered after {waited:?}");
    let text = String::from_utf8(got).unwrap();
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    let body = &text[text.find("\r\n\r\n").unwrap() + 4..];
    let body: Value = serde_json::from_str(body).unwrap();
    assert_eq!(body["error"]["type"], "invalid_request_error", "{body}");
    assert_eq!(body["error"]["code"], "request_timeout", "{body}");
}

#[test]
fn a_body_trickled_a_byte_at_a_time_is_answered_408_too() {
    // The deadline is for the whole body, not renewed by each byte.
    let server = Server::start(&["--body-read-timeout", "1"]);
    let mut stream = connect(&server);
    let started = Instant::now();
    stream
        .write_all(
            b"POST /v1/completions HTTP/1.1\r\nHost: localhost\r\n\
              Content-Type: application/json\r\nContent-Length: 100\r\n\r\n",
        )
        .unwrap();
    // Between bytes, wait for an answer rather than sleep, so that no byte
    // is written after the server closed (a reset would drop its answer).
    stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    for byte in b"{\"prompt\": \"aaaaaaaaaaaaaaaaaaaaaaaa".iter() {
        match stream.read(&mut buf) {
            Ok(n) => {
                got.extend_from_slice(&buf[..n]);
                break;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(e) => panic!("{e}"),
        }
        stream.write_all(&[*byte]).unwrap();
    }
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    got.extend(read_until_closed(&mut stream).expect("the server answers and closes"));
    let waited = started.elapsed();
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 408"), "after {waited:?}: {text}");
    assert!(waited < Duration::from_secs(8), "answered after {waited:?}");
}
