//! The echo server over in-memory streams: protocol detection, raw echo with half-close, and
//! HTTP/1.x requests, bodies and keep-alive.

use std::net::SocketAddr;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, DuplexStream};

use super::*;

const PEER: &str = "10.244.1.2:40000";

/// A client end of a connection being served by the echo server named `e`.
fn connect() -> DuplexStream {
    connect_to(Arc::new(Server::new("e", Behaviour::default())))
}

/// A client end of a connection being served by `server`.
fn connect_to(server: Arc<Server>) -> DuplexStream {
    let (client, end) = tokio::io::duplex(64 * 1024);
    let peer: SocketAddr = PEER.parse().unwrap();
    tokio::spawn(async move { handle(end, peer, &server).await });
    client
}

/// A client that has sent `request` on a fresh connection.
async fn send(request: &str) -> BufReader<DuplexStream> {
    let mut client = connect();
    client.write_all(request.as_bytes()).await.unwrap();
    BufReader::new(client)
}

/// Reads one response: status, head (lower-cased) and body (by content-length).
async fn read_response<R: AsyncBufReadExt + Unpin>(reader: &mut R) -> (u16, String, String) {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        assert_ne!(reader.read_line(&mut line).await.unwrap(), 0, "EOF in head");
        if line == "\r\n" {
            break;
        }
        head.push_str(&line.to_ascii_lowercase());
    }
    let status = head[9..12].parse().unwrap();
    let length = head
        .lines()
        .find_map(|line| line.strip_prefix("content-length: "))
        .map_or(0, |length| length.trim().parse().unwrap());
    let mut body = vec![0; length];
    reader.read_exact(&mut body).await.unwrap();
    (status, head, String::from_utf8(body).unwrap())
}

async fn at_eof<R: AsyncReadExt + Unpin>(reader: &mut R) -> bool {
    let mut rest = Vec::new();
    reader.read_to_end(&mut rest).await.unwrap();
    rest.is_empty()
}

#[test]
fn first_bytes_tell_http_from_raw() {
    assert_eq!(classify(b"GET / HTTP/1.1\r\n"), Some(Protocol::Http));
    assert_eq!(classify(b"OPTIONS "), Some(Protocol::Http));
    assert_eq!(classify(b""), None);
    assert_eq!(classify(b"DEL"), None);
    assert_eq!(classify(b"GETX"), Some(Protocol::Raw));
    assert_eq!(classify(b"hello"), Some(Protocol::Raw));
    assert_eq!(classify(b"\x16\x03\x01"), Some(Protocol::Raw));
}

#[tokio::test]
async fn raw_client_gets_greeting_then_its_bytes_back_until_it_half_closes() {
    let mut client = connect();
    client.write_all(b"ping\nsecond line").await.unwrap();
    client.shutdown().await.unwrap();
    let mut got = String::new();
    client.read_to_string(&mut got).await.unwrap();
    assert_eq!(
        got,
        format!("hello from e; you are {PEER}\nping\nsecond line")
    );
}

#[tokio::test]
async fn silent_raw_client_is_greeted_first() {
    let client = connect();
    let mut client = BufReader::new(client);
    let mut greeting = String::new();
    client.read_line(&mut greeting).await.unwrap();
    assert_eq!(greeting, format!("hello from e; you are {PEER}\n"));
    // Echo still works after the greeting, and ends with the client's half-close.
    client.get_mut().write_all(b"after").await.unwrap();
    client.get_mut().shutdown().await.unwrap();
    let mut rest = String::new();
    client.read_to_string(&mut rest).await.unwrap();
    assert_eq!(rest, "after");
}

#[tokio::test]
async fn http_reports_client_request_line_and_headers() {
    let request = "GET /hello?x=1 HTTP/1.1\r\nHost: svc\r\nX-Trace: abc\r\n\r\n";
    let mut client = send(request).await;
    let (status, head, body) = read_response(&mut client).await;
    assert_eq!(status, 200);
    assert!(head.contains("content-type: text/plain"));
    assert_eq!(
        body,
        format!(
            "server=e\nclient={PEER}\nrequest=GET /hello?x=1 HTTP/1.1\n\
             header Host: svc\nheader X-Trace: abc\nbody-bytes=0\n"
        )
    );
}

#[tokio::test]
async fn http_keeps_the_connection_alive_across_bodies() {
    let requests = "POST /a HTTP/1.1\r\nhost: s\r\ncontent-length: 5\r\n\r\nhello\
                    PUT /b HTTP/1.1\r\nhost: s\r\ntransfer-encoding: chunked\r\n\r\n\
                    3\r\nabc\r\n4;ext=1\r\ndefg\r\n0\r\ntrailer: t\r\n\r\n\
                    GET /status/503 HTTP/1.1\r\nhost: s\r\n\r\n";
    let mut client = send(requests).await;
    let (status, _, body) = read_response(&mut client).await;
    assert_eq!(status, 200);
    assert!(body.contains("request=POST /a HTTP/1.1\n"), "{body}");
    assert!(body.ends_with("body-bytes=5\n"), "{body}");
    let (status, _, body) = read_response(&mut client).await;
    assert_eq!(status, 200);
    assert!(body.contains("request=PUT /b HTTP/1.1\n"), "{body}");
    assert!(body.ends_with("body-bytes=7\n"), "{body}");
    let (status, head, _) = read_response(&mut client).await;
    assert_eq!(status, 503);
    assert!(!head.contains("connection: close"));
    // Still open: one more request is answered.
    let last = "GET /last HTTP/1.1\r\nhost: s\r\nconnection: close\r\n\r\n";
    client.get_mut().write_all(last.as_bytes()).await.unwrap();
    let (status, head, _) = read_response(&mut client).await;
    assert_eq!(status, 200);
    assert!(head.contains("connection: close"));
    assert!(at_eof(&mut client).await);
}

#[tokio::test]
async fn http_1_0_closes_unless_asked_to_keep_alive() {
    let request = "GET / HTTP/1.0\r\nconnection: keep-alive\r\n\r\nGET / HTTP/1.0\r\n\r\n";
    let mut client = send(request).await;
    let (_, head, _) = read_response(&mut client).await;
    assert!(head.contains("connection: keep-alive"), "{head}");
    let (_, head, _) = read_response(&mut client).await;
    assert!(head.contains("connection: close"), "{head}");
    assert!(at_eof(&mut client).await);
}

#[tokio::test]
async fn status_paths_choose_the_status() {
    let requests = "HEAD /status/404 HTTP/1.1\r\n\r\nGET /status/204 HTTP/1.1\r\n\r\n\
                    GET /status/99 HTTP/1.1\r\n\r\n";
    let mut client = send(requests).await;
    let mut head = String::new();
    // HEAD: a length but no body, so the next response follows the head directly.
    loop {
        let mut line = String::new();
        client.read_line(&mut line).await.unwrap();
        if line == "\r\n" {
            break;
        }
        head.push_str(&line);
    }
    assert!(head.starts_with("HTTP/1.1 404 Not Found\r\n"), "{head}");
    assert!(head.contains("content-length: "));
    let (status, head, body) = read_response(&mut client).await;
    assert_eq!((status, body.as_str()), (204, ""));
    assert!(!head.contains("content-length"));
    let (status, _, body) = read_response(&mut client).await;
    assert_eq!(status, 400);
    assert!(body.contains("no status code"), "{body}");
}

#[tokio::test]
async fn malformed_requests_get_400_and_a_close() {
    for request in [
        "GET /\r\n\r\n".to_owned(),
        "GET / HTTP/2.0\r\n\r\n".to_owned(),
        "GET / HTTP/1.1\r\n folded: header\r\n\r\n".to_owned(),
        "POST / HTTP/1.1\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n".to_owned(),
        "POST / HTTP/1.1\r\ntransfer-encoding: gzip\r\n\r\n".to_owned(),
        format!("GET / HTTP/1.1\r\nbig: {}\r\n\r\n", "x".repeat(70 * 1024)),
    ] {
        let (reader, mut writer) = tokio::io::split(connect());
        // The server may stop reading (and close) before the oversized request is all written.
        let sent = request.clone();
        tokio::spawn(async move { writer.write_all(sent.as_bytes()).await });
        let mut client = BufReader::new(reader);
        let (status, head, body) = read_response(&mut client).await;
        assert_eq!(status, 400, "{request:.60}: {body}");
        assert!(head.contains("connection: close"));
        assert!(body.starts_with("bad request: "), "{body}");
    }
}

#[tokio::test]
async fn a_flaky_server_fails_every_nth_request_across_connections_and_says_who_failed() {
    let flaky = Arc::new(Server::flaky("flaky"));
    let mut statuses = Vec::new();
    for _ in 0..2 {
        let mut client = connect_to(Arc::clone(&flaky));
        client
            .write_all(b"GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut client = BufReader::new(client);
        for _ in 0..2 {
            let (status, _, body) = read_response(&mut client).await;
            assert!(body.starts_with("server=flaky\n"), "{body}");
            statuses.push(status);
        }
    }
    assert_eq!(statuses, [200, 503, 200, 503]);
}
