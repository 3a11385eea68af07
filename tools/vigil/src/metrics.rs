//! Prometheus metrics (`--metrics ADDR:PORT`), kept with `prometheus-client`
//! and served on `/metrics` by a small HTTP/1.1 server.
//!
//! Content negotiation: a scraper that accepts OpenMetrics (Prometheus does)
//! gets `application/openmetrics-text`, as `prometheus-client` writes it;
//! anything else (`curl`, `promtool check metrics`) gets the classic text
//! format 0.0.4, converted from it (counters named with their `_total`, no
//! `# UNIT`, no `# EOF`).

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabels {
    pub vm: String,
    pub event: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StallLabels {
    pub vm: String,
    pub cpu: String,
    pub stage: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActionLabels {
    pub vm: String,
    pub policy: String,
    pub action: String,
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VmLabels {
    pub vm: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabels {
    pub endpoint: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConnectedLabels {
    pub endpoint: String,
    pub vm: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProtocolLabels {
    pub vm: String,
    pub kind: String,
}

type Count = Counter<u64, AtomicU64>;

/// Every metric vigil exports.
pub struct Metrics {
    registry: Registry,
    pub events: Family<EventLabels, Count>,
    pub coalesced: Family<EventLabels, Count>,
    pub stalls: Family<StallLabels, Count>,
    pub actions: Family<ActionLabels, Count>,
    pub protocol: Family<ProtocolLabels, Count>,
    pub dumps: Family<ResultLabels, Count>,
    pub dump_bytes: Count,
    pub dump_duration: Histogram,
    pub dumps_running: Gauge,
    pub dumps_waiting: Gauge,
    pub dump_waits: Count,
    pub connected: Family<ConnectedLabels, Gauge>,
    pub reconnects: Family<EndpointLabels, Count>,
    pub endpoints: Gauge,
    pub notify: Family<ResultLabels, Count>,
    pub reloads: Family<ResultLabels, Count>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("vigil");
        let m = Metrics {
            events: Family::default(),
            coalesced: Family::default(),
            stalls: Family::default(),
            actions: Family::default(),
            protocol: Family::default(),
            dumps: Family::default(),
            dump_bytes: Count::default(),
            // 0.25 s .. ~17 min
            dump_duration: Histogram::new(exponential_buckets(0.25, 2.0, 13)),
            dumps_running: Gauge::default(),
            dumps_waiting: Gauge::default(),
            dump_waits: Count::default(),
            connected: Family::default(),
            reconnects: Family::default(),
            endpoints: Gauge::default(),
            notify: Family::default(),
            reloads: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "events",
            "QMP events received, by VM and event name",
            m.events.clone(),
        );
        registry.register(
            "events_coalesced",
            "Routine events folded into an identical waiting one during a flood (also counted in vigil_events_total)",
            m.coalesced.clone(),
        );
        registry.register(
            "stalls",
            "VCPU_STALL events, by VM, CPU index and stage",
            m.stalls.clone(),
        );
        registry.register(
            "actions",
            "Actions (dump, restart, destroy) by VM, policy and result (started, completed, ok, failed, queued)",
            m.actions.clone(),
        );
        registry.register(
            "protocol_errors",
            "Malformed or unexpected QMP input, by VM and kind",
            m.protocol.clone(),
        );
        registry.register(
            "dumps",
            "Guest memory dumps, by result (completed, failed)",
            m.dumps.clone(),
        );
        registry.register(
            "dump_bytes",
            "Bytes of completed dumps",
            m.dump_bytes.clone(),
        );
        registry.register(
            "dump_duration_seconds",
            "Duration of completed dumps",
            m.dump_duration.clone(),
        );
        registry.register(
            "dumps_running",
            "Dumps running now (at most --max-dumps)",
            m.dumps_running.clone(),
        );
        registry.register(
            "dumps_waiting",
            "Dumps waiting for a slot (--max-dumps)",
            m.dumps_waiting.clone(),
        );
        registry.register(
            "dump_waits",
            "Dumps that had to wait for a slot (--max-dumps)",
            m.dump_waits.clone(),
        );
        registry.register(
            "endpoint_connected",
            "1 while vigil holds a QMP connection to the endpoint",
            m.connected.clone(),
        );
        registry.register(
            "endpoint_reconnects",
            "Connections made to the endpoint after the first one",
            m.reconnects.clone(),
        );
        registry.register("endpoints", "Endpoints watched", m.endpoints.clone());
        registry.register(
            "notify",
            "--notify commands by result (ok, failed, timeout, error, dropped)",
            m.notify.clone(),
        );
        registry.register(
            "config_reloads",
            "Configuration reloads (SIGHUP) by result",
            m.reloads.clone(),
        );
        for r in ["completed", "failed"] {
            let _ = m.dumps.get_or_create(&ResultLabels { result: r.into() });
        }
        Metrics { registry, ..m }
    }

    /// Creates a VM's counters of the events with a policy at 0, so that
    /// `increase()` sees its first panic too.
    pub fn init_vm(&self, vm: &str) {
        for event in [
            "GUEST_PANICKED",
            "GUEST_CRASHLOADED",
            "VCPU_STALL",
            "WATCHDOG",
            "SHUTDOWN",
        ] {
            let _ = self.events.get_or_create(&EventLabels {
                vm: vm.into(),
                event: event.into(),
            });
        }
    }

    pub fn event(&self, vm: &str, event: &str, n: u64) {
        self.events
            .get_or_create(&EventLabels {
                vm: vm.into(),
                event: event.into(),
            })
            .inc_by(n);
        if n > 1 {
            self.coalesced
                .get_or_create(&EventLabels {
                    vm: vm.into(),
                    event: event.into(),
                })
                .inc_by(n - 1);
        }
    }

    pub fn stall(&self, vm: &str, cpu: &str, stage: &str, n: u64) {
        self.stalls
            .get_or_create(&StallLabels {
                vm: vm.into(),
                cpu: cpu.into(),
                stage: stage.into(),
            })
            .inc_by(n);
    }

    pub fn action(&self, vm: &str, policy: &str, action: &str, result: &str) {
        self.actions
            .get_or_create(&ActionLabels {
                vm: vm.into(),
                policy: policy.into(),
                action: action.into(),
                result: result.into(),
            })
            .inc();
    }

    pub fn protocol_error(&self, vm: &str, kind: &str, n: u64) {
        self.protocol
            .get_or_create(&ProtocolLabels {
                vm: vm.into(),
                kind: kind.into(),
            })
            .inc_by(n);
    }

    pub fn result(family: &Family<ResultLabels, Count>, result: &str) {
        family
            .get_or_create(&ResultLabels {
                result: result.into(),
            })
            .inc();
    }

    pub fn set_connected(&self, endpoint: &str, vm: &str, up: bool) {
        self.connected
            .get_or_create(&ConnectedLabels {
                endpoint: endpoint.into(),
                vm: vm.into(),
            })
            .set(i64::from(up));
    }

    /// An endpoint that is no longer watched: its series go.
    pub fn forget_endpoint(&self, endpoint: &str, vm: &str) {
        self.connected.remove(&ConnectedLabels {
            endpoint: endpoint.into(),
            vm: vm.into(),
        });
        self.reconnects.remove(&EndpointLabels {
            endpoint: endpoint.into(),
        });
    }

    /// The OpenMetrics text, as `prometheus-client` writes it.
    pub fn openmetrics(&self) -> String {
        let mut s = String::new();
        let _ = encode(&mut s, &self.registry);
        s
    }

    /// The classic Prometheus text format (0.0.4).
    pub fn text(&self) -> String {
        to_classic_text(&self.openmetrics())
    }
}

/// OpenMetrics text to the Prometheus text format 0.0.4: counter families
/// take the `_total` name of their samples; `# UNIT` and `# EOF` go.
pub fn to_classic_text(om: &str) -> String {
    let mut counters = std::collections::HashSet::new();
    for l in om.lines() {
        if let Some(rest) = l.strip_prefix("# TYPE ") {
            if let Some(name) = rest.strip_suffix(" counter") {
                counters.insert(name.to_string());
            }
        }
    }
    let mut out = String::with_capacity(om.len());
    for l in om.lines() {
        if l == "# EOF" || l.starts_with("# UNIT ") {
            continue;
        }
        let meta = l
            .strip_prefix("# HELP ")
            .map(|r| ("# HELP ", r))
            .or_else(|| l.strip_prefix("# TYPE ").map(|r| ("# TYPE ", r)));
        if let Some((kind, rest)) = meta {
            let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
            if counters.contains(name) {
                out.push_str(&format!("{kind}{name}_total {tail}\n"));
                continue;
            }
        }
        out.push_str(l);
        out.push('\n');
    }
    out
}

/// Binds `addr` (the error is the caller's: a fatal configuration error).
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves `/metrics` on `listener` until `cancel`.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>, cancel: CancellationToken) {
    let slots = Arc::new(tokio::sync::Semaphore::new(16));
    loop {
        let (sock, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(_) => { tokio::time::sleep(Duration::from_millis(100)).await; continue }
            },
            _ = cancel.cancelled() => return,
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            continue; // too many at once: drop the connection
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(10), answer(sock, &metrics)).await;
            drop(permit);
        });
    }
}

async fn answer(mut sock: tokio::net::TcpStream, metrics: &Metrics) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && !buf.windows(2).any(|w| w == b"\n\n") {
        let n = sock.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > 16 << 10 {
            return respond(
                &mut sock,
                "431 Request Header Fields Too Large",
                "text/plain",
                "",
            )
            .await;
        }
    }
    let head = String::from_utf8_lossy(&buf);
    let mut first = head.lines().next().unwrap_or("").split(' ');
    let (method, target) = (first.next().unwrap_or(""), first.next().unwrap_or(""));
    let accept = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case("accept")
                .then(|| v.to_string())
        })
        .unwrap_or_default();
    let path = target.split('?').next().unwrap_or("");
    match (method, path) {
        ("GET", "/metrics") | ("HEAD", "/metrics") => {
            let (ctype, body) = if accept.contains("application/openmetrics-text") {
                (
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    metrics.openmetrics(),
                )
            } else {
                ("text/plain; version=0.0.4; charset=utf-8", metrics.text())
            };
            let body = if method == "HEAD" {
                String::new()
            } else {
                body
            };
            respond(&mut sock, "200 OK", ctype, &body).await
        }
        ("GET", "/") => {
            respond(
                &mut sock,
                "200 OK",
                "text/plain; charset=utf-8",
                "vigil: metrics on /metrics\n",
            )
            .await
        }
        ("GET", _) | ("HEAD", _) => {
            respond(&mut sock, "404 Not Found", "text/plain", "not found\n").await
        }
        _ => respond(&mut sock, "405 Method Not Allowed", "text/plain", "").await,
    }
}

async fn respond(
    sock: &mut tokio::net::TcpStream,
    status: &str,
    ctype: &str,
    body: &str,
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    sock.write_all(head.as_bytes()).await?;
    sock.write_all(body.as_bytes()).await?;
    sock.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classic_text_names_counters_with_total() {
        let m = Metrics::new();
        m.event("web1", "GUEST_PANICKED", 1);
        m.event("web1", "VCPU_STALL", 5);
        m.stall("web1", "1", "warning", 5);
        m.dump_duration.observe(1.5);
        m.set_connected("unix:/run/web1.qmp", "web1", true);
        let om = m.openmetrics();
        assert!(om.contains("# TYPE vigil_events counter"), "{om}");
        assert!(om.ends_with("# EOF\n"));
        let t = m.text();
        assert!(t.contains("# TYPE vigil_events_total counter"), "{t}");
        assert!(t.contains("# HELP vigil_events_total QMP events"), "{t}");
        assert!(
            t.contains(r#"vigil_events_total{vm="web1",event="GUEST_PANICKED"} 1"#),
            "{t}"
        );
        assert!(t.contains(r#"vigil_events_coalesced_total{vm="web1",event="VCPU_STALL"} 4"#));
        assert!(t.contains(r#"vigil_stalls_total{vm="web1",cpu="1",stage="warning"} 5"#));
        assert!(t.contains("vigil_dump_duration_seconds_count 1"));
        assert!(
            t.contains(r#"vigil_endpoint_connected{endpoint="unix:/run/web1.qmp",vm="web1"} 1"#)
        );
        assert!(!t.contains("# EOF") && !t.contains("# UNIT"));
        m.forget_endpoint("unix:/run/web1.qmp", "web1");
        assert!(!m.text().contains("web1.qmp"));
    }

    #[tokio::test]
    async fn serves_metrics_over_http() {
        let m = Arc::new(Metrics::new());
        m.event("a", "RESET", 1);
        let l = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = l.local_addr().unwrap();
        let cancel = CancellationToken::new();
        let t = tokio::spawn(serve(l, m, cancel.clone()));
        let get = |req: &'static str| async move {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(req.as_bytes()).await.unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            out
        };
        let r = get("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 200 OK"), "{r}");
        assert!(
            r.contains("version=0.0.4")
                && r.contains(r#"vigil_events_total{vm="a",event="RESET"} 1"#)
        );
        let r = get(
            "GET /metrics HTTP/1.1\r\nAccept: application/openmetrics-text;version=1.0.0\r\n\r\n",
        )
        .await;
        assert!(
            r.contains("application/openmetrics-text") && r.contains("# EOF"),
            "{r}"
        );
        assert!(get("GET /nope HTTP/1.1\r\n\r\n")
            .await
            .starts_with("HTTP/1.1 404"));
        assert!(get("POST /metrics HTTP/1.1\r\n\r\n")
            .await
            .starts_with("HTTP/1.1 405"));
        cancel.cancel();
        t.await.unwrap();
    }
}
