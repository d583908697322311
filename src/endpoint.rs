//! Endpoint strings: CZMQ's `@` (bind) / `>` (connect) prefixes, libzmq's
//! wildcards, and attaching a `zeromq` socket to them.
//!
//! Every example and every pattern in this crate takes its endpoints through
//! [`EndpointSpec`], so `lvcache --frontend '>tcp://localhost:5556'` means
//! "connect the frontend", `--frontend '@tcp://*:5557'` means "bind it", and a
//! bare `tcp://...` falls back to the flag's documented default, exactly as
//! CZMQ's `zsock_attach` does.
//!
//! The `zeromq` crate does not understand libzmq's wildcards: it resolves
//! `tcp://*:5556` as a DNS name and rejects the `:*` port. [`EndpointSpec`]
//! rewrites them for binds (`*` becomes `0.0.0.0`, port `*` becomes `0`) and
//! refuses them for connects, where libzmq refuses them too (`EINVAL`).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use zeromq::{Socket, ZmqError};

/// Whether a socket binds or connects to an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Attach {
    /// Listen on the endpoint (`@` prefix).
    Bind,
    /// Connect to the endpoint (`>` prefix).
    Connect,
}

impl fmt::Display for Attach {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Attach::Bind => "bind",
            Attach::Connect => "connect",
        })
    }
}

/// Errors from parsing an endpoint string or attaching a socket to it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EndpointError {
    /// The string was empty, or held only a `@`/`>` prefix.
    #[error("empty endpoint")]
    Empty,
    /// The transport is not one the `zeromq` crate implements (`tcp`, `ipc`).
    #[error("unsupported transport in {0:?}: use tcp:// or ipc:// (the zeromq crate has no inproc, pgm or ws)")]
    UnsupportedTransport(String),
    /// A `tcp://` endpoint without `host:port`, or with a bad port.
    #[error("malformed endpoint {0:?}: expected tcp://HOST:PORT or ipc://PATH")]
    Malformed(String),
    /// A connect to a wildcard host (`tcp://*:N`), which libzmq also rejects.
    #[error("cannot connect to wildcard address {0:?}: name a host, e.g. tcp://localhost:PORT")]
    WildcardConnect(String),
    /// Binding failed (address in use, permission, ...).
    #[error("cannot bind {endpoint}: {source}")]
    Bind {
        /// The endpoint as given to the socket.
        endpoint: String,
        /// What the `zeromq` crate reported.
        source: ZmqError,
    },
    /// Connecting failed, usually because nothing listened within the timeout.
    #[error("cannot connect to {endpoint}: {source}")]
    Connect {
        /// The endpoint as given to the socket.
        endpoint: String,
        /// What the `zeromq` crate reported.
        source: ZmqError,
    },
}

/// An endpoint plus whether to bind or connect it.
///
/// ```
/// use zpatterns::endpoint::{Attach, EndpointSpec};
///
/// let spec = EndpointSpec::parse(">tcp://localhost:5556", Attach::Bind).unwrap();
/// assert_eq!(spec.attach(), Attach::Connect);
/// assert_eq!(spec.endpoint(), "tcp://localhost:5556");
///
/// // No prefix: the caller's default applies; libzmq wildcards are rewritten.
/// let spec = EndpointSpec::parse("tcp://*:5557", Attach::Bind).unwrap();
/// assert_eq!(spec.endpoint(), "tcp://0.0.0.0:5557");
/// assert_eq!(spec.to_string(), "@tcp://0.0.0.0:5557");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EndpointSpec {
    attach: Attach,
    endpoint: String,
}

impl EndpointSpec {
    /// Parses `@ENDPOINT`, `>ENDPOINT` or `ENDPOINT` (which takes `default`).
    pub fn parse(s: &str, default: Attach) -> Result<Self, EndpointError> {
        let s = s.trim();
        let (attach, rest) = match s.as_bytes().first() {
            Some(b'@') => (Attach::Bind, &s[1..]),
            Some(b'>') => (Attach::Connect, &s[1..]),
            _ => (default, s),
        };
        Self::new(attach, rest.trim())
    }

    /// Parses a comma-separated list, as CZMQ does (`@tcp://*:1,>tcp://h:2`).
    pub fn parse_list(s: &str, default: Attach) -> Result<Vec<Self>, EndpointError> {
        s.split(',')
            .filter(|part| !part.trim().is_empty())
            .map(|part| Self::parse(part, default))
            .collect::<Result<Vec<_>, _>>()
            .and_then(|v| {
                if v.is_empty() {
                    Err(EndpointError::Empty)
                } else {
                    Ok(v)
                }
            })
    }

    /// A bind endpoint (wildcards rewritten).
    pub fn bind(endpoint: &str) -> Result<Self, EndpointError> {
        Self::new(Attach::Bind, endpoint)
    }

    /// A connect endpoint.
    pub fn connect(endpoint: &str) -> Result<Self, EndpointError> {
        Self::new(Attach::Connect, endpoint)
    }

    /// The loopback bind endpoint on an ephemeral port, `@tcp://127.0.0.1:0`.
    pub fn loopback() -> Self {
        Self {
            attach: Attach::Bind,
            endpoint: "tcp://127.0.0.1:0".to_owned(),
        }
    }

    fn new(attach: Attach, endpoint: &str) -> Result<Self, EndpointError> {
        if endpoint.is_empty() {
            return Err(EndpointError::Empty);
        }
        let endpoint = if let Some(addr) = endpoint.strip_prefix("tcp://") {
            format!("tcp://{}", normalize_tcp(attach, endpoint, addr)?)
        } else if endpoint.starts_with("ipc://") && endpoint.len() > "ipc://".len() {
            endpoint.to_owned()
        } else if endpoint.contains("://") {
            return Err(EndpointError::UnsupportedTransport(endpoint.to_owned()));
        } else {
            return Err(EndpointError::Malformed(endpoint.to_owned()));
        };
        Ok(Self { attach, endpoint })
    }

    /// Bind or connect.
    pub fn attach(&self) -> Attach {
        self.attach
    }

    /// The endpoint in the form the `zeromq` crate accepts.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Binds or connects `socket`; returns the resolved endpoint.
    ///
    /// For a bind the resolved endpoint carries the real port (useful with
    /// port 0). A connect waits until the peer is up, bounded by the
    /// socket's `connect_timeout` (the `zeromq` crate has no background
    /// connect as libzmq does).
    pub async fn attach_to<S: Socket>(&self, socket: &mut S) -> Result<String, EndpointError> {
        match self.attach {
            Attach::Bind => socket
                .bind(&self.endpoint)
                .await
                .map(|ep| ep.to_string())
                .map_err(|source| EndpointError::Bind {
                    endpoint: self.endpoint.clone(),
                    source,
                }),
            Attach::Connect => socket
                .connect(&self.endpoint)
                .await
                .map(|()| self.endpoint.clone())
                .map_err(|source| EndpointError::Connect {
                    endpoint: self.endpoint.clone(),
                    source,
                }),
        }
    }

    /// Like [`attach_to`](Self::attach_to), but a connect is retried every
    /// `retry` until it succeeds, so a peer may start later. Binds are not
    /// retried.
    pub async fn attach_patiently<S: Socket>(
        &self,
        socket: &mut S,
        retry: Duration,
    ) -> Result<String, EndpointError> {
        loop {
            match self.attach_to(socket).await {
                Err(EndpointError::Connect { endpoint, source }) => {
                    tracing::info!(%endpoint, cause = %source, "peer not up yet, retrying");
                    tokio::time::sleep(retry).await;
                }
                other => return other,
            }
        }
    }
}

impl fmt::Display for EndpointSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let prefix = match self.attach {
            Attach::Bind => '@',
            Attach::Connect => '>',
        };
        write!(f, "{prefix}{}", self.endpoint)
    }
}

/// Parses with [`Attach::Connect`] as the default (the common case for
/// clients); use [`EndpointSpec::parse`] to choose another default.
impl FromStr for EndpointSpec {
    type Err = EndpointError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s, Attach::Connect)
    }
}

/// Parses an endpoint that binds unless prefixed with `>`; usable directly
/// as a clap `value_parser`, so a bad endpoint is a clear CLI error.
pub fn bind_by_default(s: &str) -> Result<EndpointSpec, EndpointError> {
    EndpointSpec::parse(s, Attach::Bind)
}

/// Parses an endpoint that connects unless prefixed with `@`; usable
/// directly as a clap `value_parser`.
pub fn connect_by_default(s: &str) -> Result<EndpointSpec, EndpointError> {
    EndpointSpec::parse(s, Attach::Connect)
}

fn normalize_tcp(attach: Attach, whole: &str, addr: &str) -> Result<String, EndpointError> {
    let malformed = || EndpointError::Malformed(whole.to_owned());
    let (host, port) = addr.rsplit_once(':').ok_or_else(malformed)?;
    if host.is_empty() {
        return Err(malformed());
    }
    let port = match (attach, port) {
        (Attach::Bind, "*") => "0".to_owned(),
        (_, p) => p.parse::<u16>().map_err(|_| malformed())?.to_string(),
    };
    let host = match (attach, host) {
        (Attach::Bind, "*") => "0.0.0.0",
        (Attach::Connect, "*") => return Err(EndpointError::WildcardConnect(whole.to_owned())),
        (_, h) => h,
    };
    Ok(format!("{host}:{port}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_override_the_default() {
        let b = EndpointSpec::parse("@tcp://127.0.0.1:5", Attach::Connect).unwrap();
        assert_eq!(b.attach(), Attach::Bind);
        let c = EndpointSpec::parse(">tcp://127.0.0.1:5", Attach::Bind).unwrap();
        assert_eq!(c.attach(), Attach::Connect);
        let d = EndpointSpec::parse("tcp://127.0.0.1:5", Attach::Bind).unwrap();
        assert_eq!(d.attach(), Attach::Bind);
    }

    #[test]
    fn wildcards_are_rewritten_for_bind_and_refused_for_connect() {
        let b = EndpointSpec::bind("tcp://*:*").unwrap();
        assert_eq!(b.endpoint(), "tcp://0.0.0.0:0");
        assert!(matches!(
            EndpointSpec::connect("tcp://*:5557"),
            Err(EndpointError::WildcardConnect(_))
        ));
    }

    #[test]
    fn bad_endpoints_are_clear_errors() {
        for bad in [
            "",
            "@",
            "tcp://",
            "tcp://host",
            "tcp://:5",
            "tcp://h:99999",
            "tcp://h:x",
        ] {
            assert!(EndpointSpec::parse(bad, Attach::Bind).is_err(), "{bad:?}");
        }
        assert!(matches!(
            EndpointSpec::bind("inproc://x"),
            Err(EndpointError::UnsupportedTransport(_))
        ));
        assert!(matches!(
            EndpointSpec::bind("localhost:5"),
            Err(EndpointError::Malformed(_))
        ));
    }

    #[test]
    fn lists_split_on_commas_with_per_item_prefixes() {
        let v =
            EndpointSpec::parse_list("@tcp://*:1, >tcp://h:2,tcp://h:3", Attach::Connect).unwrap();
        let shown: Vec<_> = v.iter().map(ToString::to_string).collect();
        assert_eq!(shown, ["@tcp://0.0.0.0:1", ">tcp://h:2", ">tcp://h:3"]);
        assert!(EndpointSpec::parse_list(" , ", Attach::Bind).is_err());
    }

    #[test]
    fn ipv6_hosts_keep_their_brackets() {
        let c = EndpointSpec::connect("tcp://[::1]:5556").unwrap();
        assert_eq!(c.endpoint(), "tcp://[::1]:5556");
    }
}
