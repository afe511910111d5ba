//! The control socket of a running daemon: `tcmu-prd status` and `tcmu-prd
//! log-level` talk to it.
//!
//! A Unix stream socket (`[paths] control_socket`, default
//! [`DEFAULT_SOCKET`], mode 0600: root only). One request per connection:
//! one line of at most [`MAX_REQUEST`] bytes, `status` or `log-level
//! <filter>`; the answer is one JSON [`Reply`], then the daemon closes the
//! connection. The daemon serves it on its own thread (`daemon::control`)
//! with read and write timeouts, so a slow or silent client never holds up
//! the ring event loop. This module is the protocol and the client.

pub mod status;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use status::Status;

/// Where the daemon listens unless the config says otherwise.
pub const DEFAULT_SOCKET: &str = "/run/tcmu-prd/control.sock";
/// The longest request line accepted, newline included.
pub const MAX_REQUEST: usize = 4096;
/// The longest reply the client reads (a status of hundreds of LUs with
/// many registrations stays far below).
pub const MAX_REPLY: u64 = 64 << 20;
/// How long the client waits for the daemon's answer.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(15);

/// One request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Everything `tcmu-prd status` shows.
    Status,
    /// Set the tracing filter (an `EnvFilter` directive).
    LogLevel(String),
}

impl Request {
    /// Parses a request line (with or without its newline). Never panics;
    /// the error says what is wrong, for the reply.
    pub fn parse(raw: &[u8]) -> Result<Request, String> {
        let line = raw.strip_suffix(b"\n").unwrap_or(raw);
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.len() >= MAX_REQUEST {
            return Err(format!("request longer than {MAX_REQUEST} bytes"));
        }
        let text = std::str::from_utf8(line).map_err(|_| "request is not UTF-8".to_owned())?;
        if text.contains(|c: char| c.is_control()) {
            return Err("request contains control characters".into());
        }
        let mut words = text.split_whitespace();
        let request = match (words.next(), words.next(), words.next()) {
            (Some("status"), None, _) => Request::Status,
            (Some("log-level"), Some(filter), None) => Request::LogLevel(filter.to_owned()),
            (Some("log-level"), None, _) => return Err("log-level needs a filter".into()),
            (Some("log-level"), Some(_), Some(_)) => {
                return Err(
                    "log-level takes one filter (no spaces; join directives with ',')".into(),
                );
            }
            (Some("status"), Some(_), _) => return Err("status takes no arguments".into()),
            (None, _, _) => return Err("empty request".into()),
            (Some(other), _, _) => {
                let shown: String = other.chars().take(32).collect();
                return Err(format!(
                    "unknown request {shown:?} (expected `status` or `log-level <filter>`)"
                ));
            }
        };
        Ok(request)
    }

    /// The request line, newline included.
    #[must_use]
    pub fn line(&self) -> String {
        match self {
            Request::Status => "status\n".into(),
            Request::LogLevel(f) => format!("log-level {f}\n"),
        }
    }
}

/// The daemon's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    pub ok: bool,
    /// Why the request failed (`ok` false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The answer to `status`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Box<Status>>,
    /// The filter in force after `log-level`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_filter: Option<String>,
}

impl Reply {
    /// A refusal.
    #[must_use]
    pub fn error(why: impl Into<String>) -> Reply {
        Reply {
            ok: false,
            error: Some(why.into()),
            status: None,
            log_filter: None,
        }
    }
}

/// Why the client got no answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing listens on the socket.
    #[error(
        "no tcmu-prd daemon is listening on {}: {source} (is `tcmu-prd run` running? \
         with another [paths] control_socket, pass --socket or --config)",
        path.display()
    )]
    NotRunning {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The connection failed half-way.
    #[error("talking to the daemon on {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The answer is not a reply.
    #[error("the daemon on {} sent an unreadable answer: {why}", path.display())]
    BadReply { path: PathBuf, why: String },
}

/// Sends one request to the daemon on `socket` and returns its reply.
pub fn call(socket: &Path, req: &Request) -> Result<Reply, ClientError> {
    let mut s = UnixStream::connect(socket).map_err(|source| ClientError::NotRunning {
        path: socket.to_owned(),
        source,
    })?;
    let io = |source| ClientError::Io {
        path: socket.to_owned(),
        source,
    };
    s.set_read_timeout(Some(CLIENT_TIMEOUT)).map_err(io)?;
    s.set_write_timeout(Some(CLIENT_TIMEOUT)).map_err(io)?;
    s.write_all(req.line().as_bytes()).map_err(io)?;
    let mut buf = Vec::new();
    s.take(MAX_REPLY).read_to_end(&mut buf).map_err(io)?;
    serde_json::from_slice(&buf).map_err(|e| ClientError::BadReply {
        path: socket.to_owned(),
        why: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse() {
        assert_eq!(Request::parse(b"status\n"), Ok(Request::Status));
        assert_eq!(Request::parse(b"status"), Ok(Request::Status));
        assert_eq!(Request::parse(b"  status \r\n"), Ok(Request::Status));
        assert_eq!(
            Request::parse(b"log-level info,tcmu_prd::ring=trace\n"),
            Ok(Request::LogLevel("info,tcmu_prd::ring=trace".into()))
        );
        for r in [Request::Status, Request::LogLevel("debug".into())] {
            assert_eq!(Request::parse(r.line().as_bytes()), Ok(r));
        }
    }

    #[test]
    fn garbage_requests_are_refused_with_a_reason() {
        let long = vec![b'a'; MAX_REQUEST + 10];
        let cases: &[(&[u8], &str)] = &[
            (b"", "empty request"),
            (b"\n", "empty request"),
            (b"   \n", "empty request"),
            (b"\xff\xfe\n", "not UTF-8"),
            (b"stat\x00us\n", "control characters"),
            (b"status\tnow\n", "control characters"),
            (b"status now\n", "no arguments"),
            (b"log-level\n", "needs a filter"),
            (b"log-level debug info\n", "one filter"),
            (b"STATUS\n", "unknown request"),
            (b"GET / HTTP/1.1\r\n", "unknown request"),
            (&long, "longer than"),
        ];
        for (raw, want) in cases {
            let e = Request::parse(raw).unwrap_err();
            assert!(e.contains(want), "{raw:?}: {e}");
        }
        // Arbitrary bytes never panic.
        for seed in 0u32..2000 {
            let bytes: Vec<u8> = (0..(seed % 64))
                .map(|i| (seed.wrapping_mul(2_654_435_761).rotate_left(i) & 0xff) as u8)
                .collect();
            let _ = Request::parse(&bytes);
        }
    }

    #[test]
    fn replies_round_trip_and_omit_empty_fields() {
        let e = Reply::error("unknown request");
        let text = serde_json::to_string(&e).unwrap();
        assert_eq!(text, r#"{"ok":false,"error":"unknown request"}"#);
        assert_eq!(serde_json::from_str::<Reply>(&text).unwrap(), e);
    }

    #[test]
    fn no_daemon_names_the_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("none.sock");
        let e = call(&path, &Request::Status).unwrap_err();
        assert!(matches!(e, ClientError::NotRunning { .. }));
        assert!(e.to_string().contains(&path.display().to_string()), "{e}");
    }
}
