//! The echo server's HTTP/1.x side: reads each request (head and body) and answers it with a
//! plain-text report of what arrived, so a test can see what a proxy in between changed.
//! Keep-alive follows HTTP/1.1 (on unless `connection: close`) and HTTP/1.0 (off unless
//! `connection: keep-alive`). Bodies are read and counted, never stored.

use std::io;
use std::net::SocketAddr;

use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::Server;
use crate::apps::say;

/// Bounds what one request head may make the server hold.
const MAX_HEAD: usize = 64 * 1024;
const MAX_HEADERS: usize = 100;
const MAX_CHUNK_LINE: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("request head larger than 64 KiB")]
    HeadTooLarge,
    #[error("more than 100 headers")]
    TooManyHeaders,
    #[error("malformed request line {0:?}")]
    BadRequestLine(String),
    #[error("malformed header line {0:?}")]
    BadHeader(String),
    #[error("invalid content-length {0:?}")]
    BadContentLength(String),
    #[error("unsupported transfer-encoding {0:?}")]
    BadTransferEncoding(String),
    #[error("malformed chunked body")]
    BadChunk,
    #[error("connection closed in the middle of a request")]
    Truncated,
    #[error(transparent)]
    Io(#[from] io::Error),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The request line as received, without its line ending.
    pub line: String,
    pub method: String,
    pub target: String,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor_version: u8,
    /// Names as the client spelled them, in order.
    pub headers: Vec<(String, String)>,
}

impl Request {
    /// Values of header `name` (case-insensitive), in order.
    fn header_values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> {
        self.headers
            .iter()
            .filter(move |(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    fn has_token(&self, header: &str, token: &str) -> bool {
        self.header_values(header)
            .flat_map(|value| value.split(','))
            .any(|item| item.trim().eq_ignore_ascii_case(token))
    }

    fn keep_alive(&self) -> bool {
        if self.minor_version == 0 {
            self.has_token("connection", "keep-alive")
        } else {
            !self.has_token("connection", "close")
        }
    }
}

/// Serves requests from `reader` until the client closes, asks to close, or sends something
/// that is not HTTP/1.x (answered with a 400, then closed).
pub async fn serve<R, W>(
    reader: &mut R,
    writer: &mut W,
    peer: SocketAddr,
    server: &Server,
) -> io::Result<()>
where
    R: AsyncBufRead + Unpin,
    W: AsyncWrite + Unpin,
{
    loop {
        let outcome = match read_request(reader).await {
            Ok(None) => return Ok(()),
            Ok(Some(request)) => read_body(reader, writer, &request)
                .await
                .map(|body_bytes| (request, body_bytes)),
            Err(err) => Err(err),
        };
        match outcome {
            Ok((request, body_bytes)) => {
                let keep_alive = request.keep_alive();
                let (asked, body) = answer(&request, peer, &server.name, body_bytes);
                let status = server.status(asked).await;
                say(&format!(
                    "answered {status} {} {}",
                    request.method, request.target
                ));
                let connection = match (keep_alive, request.minor_version) {
                    (false, _) => Some("close"),
                    // An HTTP/1.0 client keeps the connection only if told so.
                    (true, 0) => Some("keep-alive"),
                    (true, _) => None,
                };
                let head_only = request.method == "HEAD";
                let response = response(status, head_only, body.as_bytes(), connection);
                writer.write_all(&response).await?;
                writer.flush().await?;
                if !keep_alive {
                    return Ok(());
                }
            }
            Err(HttpError::Io(err)) => return Err(err),
            // Nobody is left to read an answer.
            Err(HttpError::Truncated) => return Ok(()),
            Err(bad) => {
                let body = format!("bad request: {bad}\n");
                let response = response(400, false, body.as_bytes(), Some("close"));
                writer.write_all(&response).await?;
                return writer.flush().await;
            }
        }
    }
}

/// Reads one request head; `None` when the connection ends cleanly before it starts.
pub async fn read_request<R: AsyncBufRead + Unpin>(
    reader: &mut R,
) -> Result<Option<Request>, HttpError> {
    let mut budget = MAX_HEAD;
    // RFC 9112 2.2: a server should ignore empty lines before a request line.
    let line = loop {
        match read_line(reader, &mut budget, HttpError::HeadTooLarge).await? {
            None => return Ok(None),
            Some(line) if line.is_empty() => continue,
            Some(line) => break line,
        }
    };
    let bad_line = || HttpError::BadRequestLine(line.clone());
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad_line());
    };
    let minor_version = match version {
        "HTTP/1.0" => 0,
        "HTTP/1.1" => 1,
        _ => return Err(bad_line()),
    };
    if method.is_empty() || target.is_empty() {
        return Err(bad_line());
    }
    let mut headers = Vec::new();
    loop {
        let Some(header) = read_line(reader, &mut budget, HttpError::HeadTooLarge).await? else {
            return Err(HttpError::Truncated);
        };
        if header.is_empty() {
            break;
        }
        if headers.len() == MAX_HEADERS {
            return Err(HttpError::TooManyHeaders);
        }
        let Some((key, value)) = header.split_once(':') else {
            return Err(HttpError::BadHeader(header));
        };
        // Whitespace before the colon or at the start (obsolete line folding) is refused by
        // RFC 9112 because proxies disagree on what it means.
        if key.is_empty() || key.contains(char::is_whitespace) {
            return Err(HttpError::BadHeader(header));
        }
        headers.push((key.to_owned(), value.trim().to_owned()));
    }
    Ok(Some(Request {
        method: method.to_owned(),
        target: target.to_owned(),
        minor_version,
        line,
        headers,
    }))
}

/// Reads and discards the request's body; returns its length.
async fn read_body<R, W>(
    reader: &mut R,
    writer: &mut W,
    request: &Request,
) -> Result<u64, HttpError>
where
    R: AsyncBufRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let encodings: Vec<&str> = request.header_values("transfer-encoding").collect();
    let lengths: Vec<&str> = request.header_values("content-length").collect();
    if encodings.is_empty() && lengths.is_empty() {
        return Ok(0);
    }
    // Clients such as curl wait for this before sending a large body.
    if request.minor_version == 1 && request.has_token("expect", "100-continue") {
        writer.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await?;
        writer.flush().await?;
    }
    if !encodings.is_empty() {
        let all = encodings.join(",");
        // Only chunked, as the last coding, says where a request body ends (RFC 9112 6.3).
        if !all
            .rsplit(',')
            .next()
            .unwrap_or("")
            .trim()
            .eq_ignore_ascii_case("chunked")
        {
            return Err(HttpError::BadTransferEncoding(all));
        }
        return read_chunked(reader).await;
    }
    let first = lengths[0];
    if lengths.iter().any(|length| length != &first) {
        return Err(HttpError::BadContentLength(lengths.join(",")));
    }
    let length: u64 = first
        .parse()
        .map_err(|_| HttpError::BadContentLength(first.to_owned()))?;
    discard(reader, length).await?;
    Ok(length)
}

async fn read_chunked<R: AsyncBufRead + Unpin>(reader: &mut R) -> Result<u64, HttpError> {
    let mut total = 0u64;
    loop {
        let mut budget = MAX_CHUNK_LINE;
        let line = read_line(reader, &mut budget, HttpError::BadChunk)
            .await?
            .ok_or(HttpError::Truncated)?;
        let size = line.split(';').next().unwrap_or("").trim();
        let size = u64::from_str_radix(size, 16).map_err(|_| HttpError::BadChunk)?;
        if size == 0 {
            break;
        }
        discard(reader, size).await?;
        let end = read_line(reader, &mut budget, HttpError::BadChunk)
            .await?
            .ok_or(HttpError::Truncated)?;
        if !end.is_empty() {
            return Err(HttpError::BadChunk);
        }
        total += size;
    }
    // Trailer fields, up to the empty line that ends the message.
    let mut budget = MAX_HEAD;
    loop {
        match read_line(reader, &mut budget, HttpError::HeadTooLarge).await? {
            None => return Err(HttpError::Truncated),
            Some(line) if line.is_empty() => return Ok(total),
            Some(_) => {}
        }
    }
}

async fn discard<R: AsyncBufRead + Unpin>(reader: &mut R, length: u64) -> Result<(), HttpError> {
    let read = tokio::io::copy(&mut reader.take(length), &mut tokio::io::sink()).await?;
    if read < length {
        return Err(HttpError::Truncated);
    }
    Ok(())
}

/// Reads one line (without `\r\n`), charging its bytes to `budget`; `None` at a clean EOF.
async fn read_line<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    budget: &mut usize,
    too_long: HttpError,
) -> Result<Option<String>, HttpError> {
    let mut line = Vec::new();
    loop {
        let buffered = reader.fill_buf().await?;
        if buffered.is_empty() {
            return if line.is_empty() {
                Ok(None)
            } else {
                Err(HttpError::Truncated)
            };
        }
        let newline = buffered.iter().position(|b| *b == b'\n');
        let take = newline.map_or(buffered.len(), |at| at + 1);
        if take > *budget {
            return Err(too_long);
        }
        *budget -= take;
        line.extend_from_slice(&buffered[..take]);
        reader.consume(take);
        if newline.is_some() {
            break;
        }
    }
    line.pop();
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    Ok(Some(String::from_utf8_lossy(&line).into_owned()))
}

/// What the server answers to `request`: 200, or the status a `/status/<code>` path asks for
/// (400 for a code that does not exist), with a body that lists what the server saw.
pub fn answer(request: &Request, peer: SocketAddr, name: &str, body_bytes: u64) -> (u16, String) {
    let path = request.target.split('?').next().unwrap_or("");
    let status = match path.strip_prefix("/status/") {
        None => 200,
        // 1xx would not end the exchange, and codes outside 200..=599 do not exist.
        Some(code) => match code.parse::<u16>() {
            Ok(code) if (200..=599).contains(&code) => code,
            _ => return (400, format!("bad request: no status code {code:?}\n")),
        },
    };
    let mut body = format!("server={name}\nclient={peer}\nrequest={}\n", request.line);
    for (key, value) in &request.headers {
        body.push_str(&format!("header {key}: {value}\n"));
    }
    body.push_str(&format!("body-bytes={body_bytes}\n"));
    (status, body)
}

/// An HTTP/1.1 response; `connection` is the value of a `connection` header, if one is needed.
fn response(status: u16, head_only: bool, body: &[u8], connection: Option<&str>) -> Vec<u8> {
    let mut head = format!("HTTP/1.1 {status} {}\r\n", reason(status));
    // 204 and 304 never have a body, so they carry no length either (RFC 9110 8.6).
    let bodyless = status == 204 || status == 304;
    if !bodyless {
        head.push_str("content-type: text/plain; charset=utf-8\r\n");
        head.push_str(&format!("content-length: {}\r\n", body.len()));
    }
    if let Some(connection) = connection {
        head.push_str(&format!("connection: {connection}\r\n"));
    }
    head.push_str("\r\n");
    let mut response = head.into_bytes();
    if !head_only && !bodyless {
        response.extend_from_slice(body);
    }
    response
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}
