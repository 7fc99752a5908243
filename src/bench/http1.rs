//! A lean HTTP/1.1 client for the relying-party load (OCSP): keep-alive
//! connections taken from a pool, each request written in one piece,
//! answers read by their `Content-Length`.
//!
//! Why not reqwest, as everywhere else in the benchmark: the load generator
//! shares the server's two cores, and for answers as cheap as cached OCSP
//! responses reqwest's per-request work (header maps, connection pool,
//! body streams) cost more CPU than the server spent answering
//! (docs/performance.md). Every CPU second the client takes is missing from
//! the server it measures.

use std::sync::Mutex;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest header block accepted from the server.
const MAX_HEAD: usize = 16 * 1024;

pub struct Http1 {
    /// `host:port` to connect to, also sent as `Host`.
    authority: String,
    idle: Mutex<Vec<TcpStream>>,
}

/// Status and body of one answer.
pub struct Answer {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Http1 {
    /// For a base URL `http://host:port` (no TLS, no path).
    pub fn new(base: &str) -> Result<Self, String> {
        let authority = base
            .strip_prefix("http://")
            .map(|a| a.trim_end_matches('/'))
            .filter(|a| !a.is_empty() && !a.contains('/'))
            .ok_or_else(|| format!("not a plain http://host:port URL: {base}"))?;
        Ok(Self {
            authority: authority.to_string(),
            idle: Mutex::new(Vec::new()),
        })
    }

    pub async fn post(
        &self,
        path: &str,
        content_type: &str,
        body: &[u8],
    ) -> Result<Answer, String> {
        let mut request = format!(
            "POST {path} HTTP/1.1\r\nhost: {}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n\r\n",
            self.authority,
            body.len()
        )
        .into_bytes();
        request.extend_from_slice(body);
        let idle = self.idle.lock().ok().and_then(|mut v| v.pop());
        let (mut stream, reused) = match idle {
            Some(s) => (s, true),
            None => (self.connect().await?, false),
        };
        let (answer, keep_alive) = match exchange(&mut stream, &request).await {
            Ok(done) => done,
            // The server closes a connection left idle for its keep-alive
            // time; one taken from the pool may have been. Sent again on a
            // new one, as HTTP clients do when nothing came back.
            Err(Failure::Unanswered(_)) if reused => {
                stream = self.connect().await?;
                exchange(&mut stream, &request)
                    .await
                    .map_err(Failure::into_message)?
            }
            Err(e) => return Err(e.into_message()),
        };
        if keep_alive && let Ok(mut v) = self.idle.lock() {
            v.push(stream);
        }
        Ok(answer)
    }

    async fn connect(&self) -> Result<TcpStream, String> {
        let s = TcpStream::connect(&self.authority)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        s.set_nodelay(true).map_err(|e| e.to_string())?;
        Ok(s)
    }
}

enum Failure {
    /// The request could not be written, or the connection closed before
    /// any of an answer arrived.
    Unanswered(String),
    Broken(String),
}

impl Failure {
    fn into_message(self) -> String {
        match self {
            Failure::Unanswered(m) | Failure::Broken(m) => m,
        }
    }
}

async fn exchange(stream: &mut TcpStream, request: &[u8]) -> Result<(Answer, bool), Failure> {
    stream
        .write_all(request)
        .await
        .map_err(|e| Failure::Unanswered(format!("write: {e}")))?;
    let mut buf = Vec::with_capacity(4096);
    match stream.read_buf(&mut buf).await {
        Ok(0) => return Err(Failure::Unanswered("connection closed unanswered".into())),
        Ok(_) => {}
        Err(e) => return Err(Failure::Unanswered(format!("read: {e}"))),
    }
    read_answer(stream, buf).await.map_err(Failure::Broken)
}

/// Reads one answer; also says whether the connection may be used again.
async fn read_answer(stream: &mut TcpStream, mut buf: Vec<u8>) -> Result<(Answer, bool), String> {
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > MAX_HEAD {
            return Err("answer header too large".into());
        }
        read_more(stream, &mut buf).await?;
    };
    let head = std::str::from_utf8(&buf[..head_end]).map_err(|_| "header not UTF-8")?;
    let (status, length, keep_alive) = parse_head(head)?;
    while buf.len() < head_end + length {
        read_more(stream, &mut buf).await?;
    }
    if buf.len() > head_end + length {
        return Err("more bytes than Content-Length".into());
    }
    buf.drain(..head_end);
    Ok((Answer { status, body: buf }, keep_alive))
}

async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Result<(), String> {
    buf.reserve(4096);
    match stream.read_buf(buf).await {
        Ok(0) => Err("connection closed mid-answer".into()),
        Ok(_) => Ok(()),
        Err(e) => Err(format!("read: {e}")),
    }
}

/// Status, Content-Length and keep-alive of a response head. An answer
/// without a length (chunked, or read-to-close) is refused: the server
/// sends lengths, and the benchmark must notice if it stops.
fn parse_head(head: &str) -> Result<(u16, usize, bool), String> {
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("bad status line: {status_line:?}"))?;
    let (mut length, mut keep_alive) = (None, true);
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = Some(value.parse().map_err(|_| "bad Content-Length")?);
        } else if name.eq_ignore_ascii_case("connection") && value.eq_ignore_ascii_case("close") {
            keep_alive = false;
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(format!("unexpected Transfer-Encoding: {value}"));
        }
    }
    let length = length.ok_or("answer without Content-Length")?;
    Ok((status, length, keep_alive))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_are_read_for_status_length_and_keep_alive() {
        let ok = "HTTP/1.1 200 OK\r\ncontent-type: application/ocsp-response\r\nContent-Length: 1234\r\n\r\n";
        assert_eq!(parse_head(ok).unwrap(), (200, 1234, true));
        let close = "HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 5\r\n\r\n";
        assert_eq!(parse_head(close).unwrap(), (400, 5, false));
        for bad in [
            "HTTP/1.1 200 OK\r\n\r\n",
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
            "HTTP/1.0 200 OK\r\ncontent-length: 1\r\n\r\n",
            "garbage\r\n\r\n",
        ] {
            assert!(parse_head(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn only_plain_http_base_urls() {
        assert_eq!(
            Http1::new("http://127.0.0.1:8080").unwrap().authority,
            "127.0.0.1:8080"
        );
        for bad in ["https://127.0.0.1:8443", "http://host/path", "http://"] {
            assert!(Http1::new(bad).is_err(), "{bad}");
        }
    }

    /// One connection carries several answers, each read to its last byte.
    #[tokio::test]
    async fn answers_are_read_whole_over_one_connection() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut seen = Vec::new();
            for n in 0..3u8 {
                // Read one request: head, then its 3-byte body.
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    let mut b = [0u8; 256];
                    let k = s.read(&mut b).await.unwrap();
                    seen.extend_from_slice(&b[..k]);
                }
                let end = seen.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                while seen.len() < end + 3 {
                    let mut b = [0u8; 256];
                    let k = s.read(&mut b).await.unwrap();
                    seen.extend_from_slice(&b[..k]);
                }
                seen.drain(..end + 3);
                let body = vec![n; 5000];
                let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", body.len());
                // The head and the body in separate writes.
                s.write_all(head.as_bytes()).await.unwrap();
                s.write_all(&body).await.unwrap();
            }
        });
        let client = Http1::new(&format!("http://{addr}")).unwrap();
        for n in 0..3u8 {
            let a = client.post("/ocsp", "application/x", b"abc").await.unwrap();
            assert_eq!(a.status, 200);
            assert_eq!(a.body, vec![n; 5000]);
        }
        server.await.unwrap();
    }

    /// A pooled connection the server has since closed: the request goes
    /// out again on a new one.
    #[tokio::test]
    async fn a_connection_closed_while_idle_is_replaced() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            for n in 0..2u8 {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut seen = Vec::new();
                while !seen.ends_with(b"\r\n\r\nabc") {
                    let mut b = [0u8; 256];
                    let k = s.read(&mut b).await.unwrap();
                    seen.extend_from_slice(&b[..k]);
                }
                s.write_all(format!("HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\n{n}").as_bytes())
                    .await
                    .unwrap();
                // Closed as a keep-alive timeout would close it.
            }
        });
        let client = Http1::new(&format!("http://{addr}")).unwrap();
        for n in [b'0', b'1'] {
            let a = client.post("/ocsp", "application/x", b"abc").await.unwrap();
            assert_eq!(a.body, vec![n]);
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        server.await.unwrap();
    }
}
