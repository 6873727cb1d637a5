//! A small HTTP/1.1 implementation over blocking std sockets: enough for the boot chain
//! (iPXE), the node agent's JSON calls and the server's API. One request per connection
//! (`Connection: close`), bounded header and body sizes, no chunked encoding.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

use crate::error::{net, Error, Result};

/// The largest request or response head accepted.
pub const MAX_HEAD: usize = 16 * 1024;

/// A parsed request head, with the body left on the stream.
#[derive(Debug, Clone)]
pub struct Request {
    /// GET, POST, HEAD...
    pub method: String,
    /// The path without the query.
    pub path: String,
    /// The raw query string (after '?'), possibly empty.
    pub query: String,
    /// Headers, names lower-cased.
    pub headers: Vec<(String, String)>,
}

impl Request {
    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// A query parameter's value (percent-decoded).
    pub fn query_param(&self, name: &str) -> Option<String> {
        self.query
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| percent_decode(v))
    }
}

/// Decodes %XX escapes and '+'.
pub fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(v) => {
                        out.push(v);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Reads the head (request line + headers) of one request.
pub fn read_request<R: BufRead>(r: &mut R) -> Result<Request> {
    let lines = read_head(r, "reading request")?;
    let first = lines
        .first()
        .ok_or_else(|| proto("reading request", "empty request"))?;
    let mut parts = first.split_whitespace();
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(proto("reading request", "malformed request line"));
    };
    if !version.starts_with("HTTP/1.") {
        return Err(proto("reading request", "not HTTP/1.x"));
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    Ok(Request {
        method: method.to_string(),
        path: path.to_string(),
        query: query.to_string(),
        headers: parse_headers(&lines[1..]),
    })
}

fn proto(what: &str, reason: &str) -> Error {
    Error::Protocol {
        what: what.to_string(),
        reason: reason.to_string(),
    }
}

fn read_head<R: BufRead>(r: &mut R, what: &str) -> Result<Vec<String>> {
    let mut lines = Vec::new();
    let mut total = 0;
    loop {
        let mut line = String::new();
        let n = r
            .take((MAX_HEAD - total + 1) as u64)
            .read_line(&mut line)
            .map_err(net(what))?;
        if n == 0 {
            return Err(proto(what, "connection closed in the head"));
        }
        total += n;
        if total > MAX_HEAD {
            return Err(proto(what, "head too large"));
        }
        let line = line.trim_end_matches(['\r', '\n']).to_string();
        if line.is_empty() {
            return Ok(lines);
        }
        lines.push(line);
    }
}

fn parse_headers(lines: &[String]) -> Vec<(String, String)> {
    lines
        .iter()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect()
}

/// Reads a body of exactly Content-Length bytes, refusing more than `limit`.
pub fn read_body<R: Read>(
    r: &mut R,
    req: &Request,
    limit: usize,
) -> std::result::Result<Vec<u8>, (u16, String)> {
    let len = match req.header("content-length") {
        Some(v) => v
            .parse::<usize>()
            .map_err(|_| (400, format!("Content-Length: {v:?} is not a number")))?,
        None => return Err((411, "Content-Length is required".into())),
    };
    if len > limit {
        return Err((
            413,
            format!("body of {len} bytes is over the {limit}-byte limit"),
        ));
    }
    let mut body = vec![0; len];
    r.read_exact(&mut body)
        .map_err(|e| (400, format!("reading the body: {e}")))?;
    Ok(body)
}

/// Writes a complete response with a body.
pub fn respond<W: Write>(
    w: &mut W,
    status: u16,
    content_type: &str,
    body: &[u8],
    extra: &[(&str, String)],
) -> std::io::Result<()> {
    write_head(w, status, content_type, body.len() as u64, extra)?;
    w.write_all(body)?;
    w.flush()
}

/// Writes a response head announcing `len` body bytes, which the caller sends after it.
pub fn write_head<W: Write>(
    w: &mut W,
    status: u16,
    content_type: &str,
    len: u64,
    extra: &[(&str, String)],
) -> std::io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {len}\r\nConnection: close\r\n",
        reason(status),
    );
    for (k, v) in extra {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    w.write_all(head.as_bytes())
}

/// The reason phrase of a status code.
fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        206 => "Partial Content",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        411 => "Length Required",
        413 => "Payload Too Large",
        416 => "Range Not Satisfiable",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

/// A parsed `http://host:port/path` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    /// `host[:port]` as written.
    pub authority: String,
    /// The path, starting with '/'.
    pub path: String,
}

impl Url {
    /// Parses an http URL; https is refused until the pinned-CA client exists.
    pub fn parse(s: &str) -> Result<Url> {
        let rest = s.strip_prefix("http://").ok_or_else(|| Error::Config {
            what: format!("server URL {s:?}"),
            reason: "only http:// is supported yet".into(),
        })?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if authority.is_empty() {
            return Err(Error::Config {
                what: format!("server URL {s:?}"),
                reason: "no host".into(),
            });
        }
        Ok(Url {
            authority: authority.to_string(),
            path: path.to_string(),
        })
    }

    fn addr(&self) -> Result<SocketAddr> {
        let hp = if self.authority.contains(':') {
            self.authority.clone()
        } else {
            format!("{}:80", self.authority)
        };
        hp.to_socket_addrs()
            .map_err(net(format!("resolving {}", self.authority)))?
            .next()
            .ok_or_else(|| proto(&format!("resolving {}", self.authority), "no address"))
    }
}

/// A response: status and body.
#[derive(Debug, Clone)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// The body.
    pub body: Vec<u8>,
}

/// Sends one request (`body` as JSON when given) and reads the whole response.
pub fn call(
    method: &str,
    base: &Url,
    path: &str,
    body: Option<&[u8]>,
    timeout: Duration,
) -> Result<Response> {
    let what = format!("{method} http://{}{path}", base.authority);
    let addr = base.addr()?;
    let mut s = TcpStream::connect_timeout(&addr, timeout).map_err(net(what.clone()))?;
    s.set_read_timeout(Some(timeout))
        .map_err(net(what.clone()))?;
    s.set_write_timeout(Some(timeout))
        .map_err(net(what.clone()))?;
    let body = body.unwrap_or_default();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {}\r\nUser-Agent: plinth-init\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        base.authority,
        body.len()
    );
    s.write_all(head.as_bytes()).map_err(net(what.clone()))?;
    s.write_all(body).map_err(net(what.clone()))?;
    let mut r = BufReader::new(s);
    let lines = read_head(&mut r, &what)?;
    let status = lines
        .first()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse::<u16>().ok())
        .ok_or_else(|| proto(&what, "malformed status line"))?;
    let headers = parse_headers(lines.get(1..).unwrap_or_default());
    let len = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse::<usize>().ok());
    let mut resp = Vec::new();
    match len {
        Some(n) => {
            let n = n.min(1 << 20);
            resp.resize(n, 0);
            r.read_exact(&mut resp).map_err(net(what.clone()))?;
        }
        None => {
            r.take(1 << 20)
                .read_to_end(&mut resp)
                .map_err(net(what.clone()))?;
        }
    }
    Ok(Response { status, body: resp })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_and_query() {
        let raw = b"GET /boot.ipxe?mac=52%3A54%3A00%3A12%3A34%3A56&uuid=x HTTP/1.1\r\nHost: h\r\nRange: bytes=0-1\r\n\r\n";
        let req = read_request(&mut &raw[..]).expect("parse");
        assert_eq!(req.path, "/boot.ipxe");
        assert_eq!(req.query_param("mac").as_deref(), Some("52:54:00:12:34:56"));
        assert_eq!(req.header("range"), Some("bytes=0-1"));
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
    }

    #[test]
    fn urls() {
        let u = Url::parse("http://10.0.2.2:8080").expect("url");
        assert_eq!(u.authority, "10.0.2.2:8080");
        assert!(Url::parse("https://x").is_err());
    }
}
