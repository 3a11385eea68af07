//! QMP endpoints: `unix:PATH` and `tcp:HOST:PORT`.

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::str::FromStr;

use tokio::io::{AsyncRead, AsyncWrite};

/// Where a QEMU QMP server listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// `unix:/path/to/qmp.sock`
    Unix(PathBuf),
    /// `tcp:host:port` (an IPv6 host is written in brackets: `tcp:[::1]:4444`)
    Tcp { host: String, port: u16 },
}

pub type ReadHalf = Box<dyn AsyncRead + Send + Unpin>;
pub type WriteHalf = Box<dyn AsyncWrite + Send + Unpin>;

impl FromStr for Endpoint {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(format!("{s:?}: empty socket path (expected unix:PATH)"));
            }
            Ok(Endpoint::Unix(PathBuf::from(path)))
        } else if let Some(rest) = s.strip_prefix("tcp:") {
            let (host, port) = rest
                .rsplit_once(':')
                .ok_or_else(|| format!("{s:?}: expected tcp:HOST:PORT"))?;
            let host = host
                .strip_prefix('[')
                .and_then(|h| h.strip_suffix(']'))
                .unwrap_or(host);
            if host.is_empty() {
                return Err(format!("{s:?}: empty host (expected tcp:HOST:PORT)"));
            }
            let port: u16 = port
                .parse()
                .map_err(|_| format!("{s:?}: bad port {port:?} (expected tcp:HOST:PORT)"))?;
            if port == 0 {
                return Err(format!("{s:?}: port 0 (expected tcp:HOST:PORT)"));
            }
            Ok(Endpoint::Tcp {
                host: host.to_string(),
                port,
            })
        } else {
            Err(format!(
                "{s:?}: unknown endpoint (expected unix:PATH or tcp:HOST:PORT)"
            ))
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Unix(p) => write!(f, "unix:{}", p.display()),
            Endpoint::Tcp { host, port } if host.contains(':') => write!(f, "tcp:[{host}]:{port}"),
            Endpoint::Tcp { host, port } => write!(f, "tcp:{host}:{port}"),
        }
    }
}

impl Endpoint {
    /// The name used for a VM whose QEMU has no `-name`: the socket's file
    /// name without its extension (`/run/vm/web1.qmp` gives `web1`), or
    /// `HOST-PORT` for TCP.
    pub fn fallback_name(&self) -> String {
        match self {
            Endpoint::Unix(p) => p
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "vm".to_string()),
            Endpoint::Tcp { host, port } => format!("{host}-{port}"),
        }
    }

    /// Opens a connection to the endpoint.
    pub async fn connect(&self) -> io::Result<(ReadHalf, WriteHalf)> {
        match self {
            Endpoint::Unix(p) => {
                let s = tokio::net::UnixStream::connect(p).await?;
                let (r, w) = s.into_split();
                Ok((Box::new(r), Box::new(w)))
            }
            Endpoint::Tcp { host, port } => {
                let s = tokio::net::TcpStream::connect((host.as_str(), *port)).await?;
                let _ = s.set_nodelay(true);
                let (r, w) = s.into_split();
                Ok((Box::new(r), Box::new(w)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_unix_and_tcp() {
        assert_eq!(
            "unix:/run/vm/a.qmp".parse::<Endpoint>().unwrap(),
            Endpoint::Unix("/run/vm/a.qmp".into())
        );
        assert_eq!(
            "tcp:localhost:4444".parse::<Endpoint>().unwrap(),
            Endpoint::Tcp {
                host: "localhost".into(),
                port: 4444
            }
        );
        assert_eq!(
            "tcp:[::1]:4444".parse::<Endpoint>().unwrap(),
            Endpoint::Tcp {
                host: "::1".into(),
                port: 4444
            }
        );
    }

    #[test]
    fn rejects_bad_endpoints() {
        for bad in [
            "",
            "unix:",
            "/tmp/x.sock",
            "tcp:host",
            "tcp::44",
            "tcp:h:0",
            "tcp:h:99999",
            "tcp:h:x",
            "serial:/dev/x",
        ] {
            assert!(bad.parse::<Endpoint>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn display_round_trips() {
        for s in ["unix:/a/b.sock", "tcp:127.0.0.1:4444", "tcp:[::1]:5"] {
            assert_eq!(s.parse::<Endpoint>().unwrap().to_string(), s);
        }
    }

    #[test]
    fn fallback_names() {
        assert_eq!(
            "unix:/run/vm/web1.qmp"
                .parse::<Endpoint>()
                .unwrap()
                .fallback_name(),
            "web1"
        );
        assert_eq!(
            "unix:/run/vm/qmp"
                .parse::<Endpoint>()
                .unwrap()
                .fallback_name(),
            "qmp"
        );
        assert_eq!(
            "tcp:10.0.0.1:4444"
                .parse::<Endpoint>()
                .unwrap()
                .fallback_name(),
            "10.0.0.1-4444"
        );
    }
}
