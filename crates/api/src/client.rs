//! A small blocking HTTP/1.1 client for the API socket (`pearvisor ctl`).
//!
//! One request per connection (`Connection: close`); the response is read
//! to the end and its body decoded by `Content-Length` or chunked transfer
//! coding, byte for byte (a screenshot's PNG comes back untouched). Only
//! std: it works wherever the `pearvisor` binary does.

use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

/// Largest response read.
const MAX_RESPONSE: u64 = 64 << 20;

/// Errors talking to the API server.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "no PearVisor API at {path}: is `pearvisor run --api-socket {path}` running?",
        path = .0.display()
    )]
    NoServer(PathBuf),
    #[error("cannot connect to {}", path.display())]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("lost the connection to the API server")]
    Io(#[source] std::io::Error),
    #[error("malformed HTTP response: {0}")]
    Malformed(&'static str),
}

/// An answer from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    /// Header names in lower case, in the order received.
    pub headers: Vec<(String, String)>,
    /// The body as sent, without its transfer coding (binary-safe).
    pub body: Vec<u8>,
}

impl Response {
    /// Whether the status is 2xx.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The first header called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON, if it is.
    pub fn json(&self) -> Option<Value> {
        serde_json::from_slice(&self.body).ok()
    }

    /// The body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The server's message for an error: `error` of the JSON body, else
    /// the body's text, else the status.
    pub fn error_message(&self) -> String {
        if let Some(Value::String(m)) = self.json().as_ref().and_then(|v| v.get("error")) {
            return m.clone();
        }
        let text = self.text();
        let text = text.trim();
        if text.is_empty() {
            format!("the server answered {}", self.status)
        } else {
            text.to_string()
        }
    }
}

/// A client for one API socket.
#[derive(Debug, Clone)]
pub struct Client {
    socket: PathBuf,
    timeout: Option<Duration>,
}

impl Client {
    /// A client for the server at `socket`; no timeout.
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self {
            socket: socket.into(),
            timeout: None,
        }
    }

    /// Gives up reading or writing after `timeout`.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// The socket's path.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// `GET path`.
    pub fn get(&self, path: &str) -> Result<Response, ClientError> {
        self.request("GET", path, None)
    }

    /// `PUT path` with an optional JSON body.
    pub fn put(&self, path: &str, body: Option<&str>) -> Result<Response, ClientError> {
        self.request("PUT", path, body)
    }

    /// Sends one request and reads the whole response.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> Result<Response, ClientError> {
        let mut stream =
            UnixStream::connect(&self.socket).map_err(|source| match source.kind() {
                ErrorKind::NotFound | ErrorKind::ConnectionRefused => {
                    ClientError::NoServer(self.socket.clone())
                }
                _ => ClientError::Connect {
                    path: self.socket.clone(),
                    source,
                },
            })?;
        stream
            .set_read_timeout(self.timeout)
            .and_then(|()| stream.set_write_timeout(self.timeout))
            .map_err(ClientError::Io)?;
        let body = body.unwrap_or("");
        let mut request = format!(
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\nUser-Agent: pearvisor/{}\r\n\
             Accept: */*\r\nConnection: close\r\n",
            crate::VERSION
        );
        if !body.is_empty() {
            request.push_str("Content-Type: application/json\r\n");
        }
        if !body.is_empty() || method != "GET" {
            request.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        request.push_str("\r\n");
        request.push_str(body);
        stream
            .write_all(request.as_bytes())
            .and_then(|()| stream.flush())
            .map_err(ClientError::Io)?;
        let mut raw = Vec::new();
        stream
            .take(MAX_RESPONSE)
            .read_to_end(&mut raw)
            .map_err(ClientError::Io)?;
        parse_response(&raw)
    }
}

/// Parses a complete HTTP/1.1 response (skipping 1xx interim ones).
pub fn parse_response(mut raw: &[u8]) -> Result<Response, ClientError> {
    loop {
        let end = find(raw, b"\r\n\r\n").ok_or(ClientError::Malformed("no end of headers"))?;
        let head =
            std::str::from_utf8(&raw[..end]).map_err(|_| ClientError::Malformed("not UTF-8"))?;
        let rest = &raw[end + 4..];
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or("");
        let mut parts = status_line.splitn(3, ' ');
        if !parts.next().is_some_and(|v| v.starts_with("HTTP/1.")) {
            return Err(ClientError::Malformed("not an HTTP/1 status line"));
        }
        let status: u16 = parts
            .next()
            .and_then(|s| s.parse().ok())
            .filter(|s| (100..600).contains(s))
            .ok_or(ClientError::Malformed("bad status code"))?;
        let mut headers = Vec::new();
        for line in lines {
            let (name, value) = line
                .split_once(':')
                .ok_or(ClientError::Malformed("bad header line"))?;
            headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
        }
        if (100..200).contains(&status) {
            raw = rest;
            continue;
        }
        let response = Response {
            status,
            headers,
            body: Vec::new(),
        };
        let chunked = response
            .header("transfer-encoding")
            .is_some_and(|te| te.to_ascii_lowercase().contains("chunked"));
        let body = if chunked {
            decode_chunked(rest)?
        } else if let Some(len) = response.header("content-length") {
            let len: usize = len
                .parse()
                .map_err(|_| ClientError::Malformed("bad Content-Length"))?;
            rest.get(..len)
                .ok_or(ClientError::Malformed("body shorter than Content-Length"))?
                .to_vec()
        } else {
            rest.to_vec()
        };
        return Ok(Response { body, ..response });
    }
}

fn decode_chunked(mut data: &[u8]) -> Result<Vec<u8>, ClientError> {
    let mut body = Vec::new();
    loop {
        let eol = find(data, b"\r\n").ok_or(ClientError::Malformed("truncated chunk size"))?;
        let line = std::str::from_utf8(&data[..eol])
            .map_err(|_| ClientError::Malformed("bad chunk size"))?;
        let size = line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size, 16)
            .map_err(|_| ClientError::Malformed("bad chunk size"))?;
        data = &data[eol + 2..];
        if size == 0 {
            return Ok(body); // trailers, if any, are ignored
        }
        let chunk = data
            .get(..size)
            .ok_or(ClientError::Malformed("truncated chunk"))?;
        body.extend_from_slice(chunk);
        data = data
            .get(size..)
            .and_then(|d| d.strip_prefix(b"\r\n"))
            .ok_or(ClientError::Malformed("chunk without CRLF"))?;
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_content_length_and_chunked_bodies() {
        let r = parse_response(
            b"HTTP/1.1 409 Conflict\r\nContent-Type: application/json\r\nContent-Length: 15\r\n\r\n{\"error\":\"no\"}\nEXTRA",
        )
        .unwrap();
        assert_eq!(r.status, 409);
        assert_eq!(r.header("Content-Type"), Some("application/json"));
        assert_eq!(r.error_message(), "no");
        assert!(!r.is_success());

        let r = parse_response(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4;ext=1\r\nabcd\r\nA\r\n0123456789\r\n0\r\nX-Trailer: y\r\n\r\n",
        )
        .unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.body, b"abcd0123456789");

        let r = parse_response(b"HTTP/1.0 204 No Content\r\n\r\n").unwrap();
        assert!(r.is_success());
        assert_eq!(r.error_message(), "the server answered 204");
    }

    #[test]
    fn binary_bodies_come_back_untouched() {
        // A PNG signature, CRLFs, a blank line, NULs and bytes that are not UTF-8.
        let png: Vec<u8> = [
            &crate::PNG_SIGNATURE[..],
            b"\r\n\r\n\0\0\xff\xfe\x80HTTP/1.1 200 OK\r\n\r\n",
            &(0..=255).collect::<Vec<u8>>(),
        ]
        .concat();
        let mut raw = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: {}\r\n\r\n",
            png.len()
        )
        .into_bytes();
        raw.extend_from_slice(&png);
        let r = parse_response(&raw).unwrap();
        assert_eq!(r.header("content-type"), Some("image/png"));
        assert_eq!(r.body, png);

        let mut raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        for chunk in png.chunks(100) {
            raw.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
            raw.extend_from_slice(chunk);
            raw.extend_from_slice(b"\r\n");
        }
        raw.extend_from_slice(b"0\r\n\r\n");
        assert_eq!(parse_response(&raw).unwrap().body, png);
    }

    #[test]
    fn refuses_garbage() {
        for bad in [
            &b"garbage"[..],
            b"SSH-2.0 hello\r\n\r\n",
            b"HTTP/1.1 abc OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab",
            b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n",
        ] {
            assert!(
                matches!(parse_response(bad), Err(ClientError::Malformed(_))),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn a_missing_socket_says_what_to_run() {
        let e = Client::new("/nonexistent/pv.sock")
            .get("/api/v1/vm.info")
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "no PearVisor API at /nonexistent/pv.sock: is `pearvisor run --api-socket /nonexistent/pv.sock` running?"
        );
    }
}
