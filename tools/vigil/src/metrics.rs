//! Prometheus metrics (`--metrics ADDR:PORT`), kept with `prometheus-client`
//! and served on `/metrics` by hyper's HTTP/1.1 server.
//!
//! Content negotiation: a scraper that accepts OpenMetrics (Prometheus does)
//! gets `application/openmetrics-text`, as `prometheus-client` writes it;
//! anything else (`curl`, `promtool check metrics`) gets the classic text
//! format 0.0.4, converted from it (counters named with their `_total`, no
//! `# UNIT`, no `# EOF`).
//!
//! Every QEMU is a hostile peer, so no label value it can choose is kept as
//! it is:
//! - `event`: the names of QEMU 10.2's QMP events and VCPU_STALL
//!   ([`KNOWN_EVENTS`]); any other name is `other` ([`event_label`]);
//! - `cpu`: a decimal integer 0..=4095, and at most [`MAX_CPUS_PER_VM`]
//!   distinct ones per VM; anything else is `other` ([`cpu_label`]);
//! - `stage`: `warning` or `action`, else `unknown`;
//! - `sink`, `reason`: closed sets ([`DROP_SINKS`], [`REFUSAL_REASONS`]);
//! - every other value (`vm`, `endpoint`, `policy`, ...): control characters
//!   replaced by `?`, at most [`MAX_LABEL_BYTES`] bytes, a longer one cut at a
//!   character boundary and ended with `…` and a hash of the whole value, so
//!   that two long names stay two series ([`label_value`]). `"`, `\` and
//!   newlines are escaped by `prometheus-client`'s encoder itself.
//!
//! At most [`MAX_VMS`] distinct `vm` values exist at once; the series of a VM
//! beyond that are counted under `vm="other"`. [`Metrics::forget_vm`] removes
//! every series of a VM (and frees its place); an endpoint has one
//! `vigil_endpoint_connected` series, of the VM it last named.
//!
//! The server answers a scrape while many connections sit idle: a request
//! head must arrive within [`ServeLimits::header_timeout`], a connection
//! lives at most [`ServeLimits::connection_timeout`] and serves one request;
//! at [`ServeLimits::max_connections`] a new connection closes the oldest one
//! that has not sent its request yet.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, ACCEPT, ALLOW, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// The QMP events of QEMU 10.2 (every `{ 'event': NAME` of its
/// `qapi/*.json`) and VCPU_STALL (ours), sorted for a binary search: the
/// values the `event` label takes besides `other`.
pub const KNOWN_EVENTS: &[&str] = &[
    "ACPI_DEVICE_OST",
    "BALLOON_CHANGE",
    "BLOCK_EXPORT_DELETED",
    "BLOCK_IMAGE_CORRUPTED",
    "BLOCK_IO_ERROR",
    "BLOCK_JOB_CANCELLED",
    "BLOCK_JOB_COMPLETED",
    "BLOCK_JOB_ERROR",
    "BLOCK_JOB_PENDING",
    "BLOCK_JOB_READY",
    "BLOCK_WRITE_THRESHOLD",
    "COLO_EXIT",
    "CPU_POLARIZATION_CHANGE",
    "DEVICE_DELETED",
    "DEVICE_TRAY_MOVED",
    "DEVICE_UNPLUG_GUEST_ERROR",
    "DUMP_COMPLETED",
    "FAILOVER_NEGOTIATED",
    "GUEST_CRASHLOADED",
    "GUEST_PANICKED",
    "GUEST_PVSHUTDOWN",
    "HV_BALLOON_STATUS_REPORT",
    "JOB_STATUS_CHANGE",
    "MEMORY_DEVICE_SIZE_CHANGE",
    "MEMORY_FAILURE",
    "MIGRATION",
    "MIGRATION_PASS",
    "NETDEV_STREAM_CONNECTED",
    "NETDEV_STREAM_DISCONNECTED",
    "NETDEV_VHOST_USER_CONNECTED",
    "NETDEV_VHOST_USER_DISCONNECTED",
    "NIC_RX_FILTER_CHANGED",
    "POWERDOWN",
    "PR_MANAGER_STATUS_CHANGED",
    "QUORUM_FAILURE",
    "QUORUM_REPORT_BAD",
    "RESET",
    "RESUME",
    "RTC_CHANGE",
    "SCLP_CPI_INFO_AVAILABLE",
    "SHUTDOWN",
    "SPICE_CONNECTED",
    "SPICE_DISCONNECTED",
    "SPICE_INITIALIZED",
    "SPICE_MIGRATE_COMPLETED",
    "STOP",
    "SUSPEND",
    "SUSPEND_DISK",
    "UNPLUG_PRIMARY",
    "VCPU_STALL",
    "VFIO_MIGRATION",
    "VFU_CLIENT_HANGUP",
    "VNC_CONNECTED",
    "VNC_DISCONNECTED",
    "VNC_INITIALIZED",
    "VSERPORT_CHANGE",
    "WAKEUP",
    "WATCHDOG",
];

/// The label value standing for everything outside a label's allowed set.
pub const OTHER: &str = "other";
/// The longest free-form label value (`vm`, `endpoint`, `policy`, ...), in bytes.
pub const MAX_LABEL_BYTES: usize = 128;
/// Distinct `vm` label values at once; later VMs are counted as `vm="other"`.
pub const MAX_VMS: usize = 4096;
/// The highest `cpu` label value (QEMU's highest vCPU count is 4096).
pub const MAX_CPU_INDEX: u16 = 4095;
/// Distinct `cpu` label values of one VM; later ones are `cpu="other"`.
pub const MAX_CPUS_PER_VM: usize = 256;
/// The values of `vigil_records_dropped_total`'s `sink` label besides `other`.
pub const DROP_SINKS: &[&str] = &["log", "notify"];
/// The values of `vigil_peer_refused_total`'s `reason` label (sorted).
pub const REFUSAL_REASONS: &[&str] = &[
    "bound-path",
    "name-claim",
    "not-a-socket",
    "other",
    "peer-cgroup",
    "peer-uid",
    "socket-owner",
    "symlink",
];

/// The `event` label of a QMP event name: itself if QEMU 10.2 knows it (or
/// it is VCPU_STALL), else `other`.
pub fn event_label(name: &str) -> &'static str {
    match KNOWN_EVENTS.binary_search(&name) {
        Ok(i) => KNOWN_EVENTS[i],
        Err(_) => OTHER,
    }
}

/// The `cpu` label of a VCPU_STALL's `cpu-index`: a decimal integer
/// 0..=[`MAX_CPU_INDEX`] (written without leading zeros), else `other`.
pub fn cpu_label(cpu: &str) -> String {
    if (1..=4).contains(&cpu.len()) && cpu.bytes().all(|b| b.is_ascii_digit()) {
        if let Ok(i) = cpu.parse::<u16>() {
            if i <= MAX_CPU_INDEX {
                return i.to_string();
            }
        }
    }
    OTHER.to_string()
}

/// The `stage` label of a VCPU_STALL: `warning`, `action` or `unknown`.
pub fn stage_label(stage: &str) -> &'static str {
    match stage {
        "warning" => "warning",
        "action" => "action",
        _ => "unknown",
    }
}

/// A free-form label value made safe: control characters become `?`; a value
/// longer than [`MAX_LABEL_BYTES`] is cut at a character boundary and ended
/// with `…` and 8 hex digits of a hash of the whole value.
pub fn label_value(s: &str) -> String {
    const MARK: &str = "…";
    let clean = |s: &str| -> String {
        s.chars()
            .map(|c| if c.is_control() { '?' } else { c })
            .collect()
    };
    if s.len() <= MAX_LABEL_BYTES {
        return clean(s);
    }
    let mut cut = MAX_LABEL_BYTES - MARK.len() - 8;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    // FNV-1a: the same value on every run, unlike std's RandomState
    let h = s.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    format!("{}{MARK}{:08x}", clean(&s[..cut]), (h ^ (h >> 32)) as u32)
}

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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DroppedLabels {
    pub vm: String,
    pub sink: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusedLabels {
    pub vm: String,
    pub reason: String,
}

type Count = Counter<u64, AtomicU64>;

/// One series with a `vm` label, as recorded for [`Metrics::forget_vm`].
#[derive(Debug, Hash, PartialEq, Eq)]
enum Series {
    Event(EventLabels),
    Coalesced(EventLabels),
    Stall(StallLabels),
    Action(ActionLabels),
    Protocol(ProtocolLabels),
    Connected(ConnectedLabels),
    Dropped(DroppedLabels),
    Refused(RefusedLabels),
    DumpTimeouts(VmLabels),
    DumpUnavailable(VmLabels),
    NameMismatch(VmLabels),
}

/// The series of one `vm` label value.
#[derive(Default)]
struct VmRecord {
    series: HashSet<Series>,
    cpus: HashSet<String>,
}

#[derive(Default)]
struct State {
    /// By `vm` label value; at most [`MAX_VMS`] besides `other`.
    vms: HashMap<String, VmRecord>,
    /// Endpoint label value -> the `vm` label of its connected series.
    endpoints: HashMap<String, String>,
}

impl State {
    /// The `vm` label of `vm` and its record, made if there is room (else
    /// the record of `other`).
    fn vm(&mut self, vm: &str) -> (String, &mut VmRecord) {
        let mut label = label_value(vm);
        let named = self.vms.len() - usize::from(self.vms.contains_key(OTHER));
        if !self.vms.contains_key(&label) && named >= MAX_VMS {
            label = OTHER.to_string();
        }
        let rec = self.vms.entry(label.clone()).or_default();
        (label, rec)
    }
}

/// Every metric vigil exports.
pub struct Metrics {
    registry: Registry,
    state: Mutex<State>,
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
    pub records_dropped: Family<DroppedLabels, Count>,
    pub peer_refusals: Family<RefusedLabels, Count>,
    pub dump_timeouts: Family<VmLabels, Count>,
    pub dump_unavailable: Family<VmLabels, Gauge>,
    pub name_mismatches: Family<VmLabels, Count>,
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
            records_dropped: Family::default(),
            peer_refusals: Family::default(),
            dump_timeouts: Family::default(),
            dump_unavailable: Family::default(),
            name_mismatches: Family::default(),
            state: Mutex::default(),
            registry: Registry::default(),
        };
        registry.register(
            "events",
            "QMP events received, by VM and event name (names QEMU 10.2 does not define are event=\"other\")",
            m.events.clone(),
        );
        registry.register(
            "events_coalesced",
            "Routine events folded into an identical waiting one during a flood (also counted in vigil_events_total)",
            m.coalesced.clone(),
        );
        registry.register(
            "stalls",
            "VCPU_STALL events, by VM, CPU index (0..4095, at most 256 per VM, else \"other\") and stage",
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
            "dump_timeouts",
            "Dumps abandoned because they did not finish in time, by VM",
            m.dump_timeouts.clone(),
        );
        registry.register(
            "dump_unavailable",
            "1 while the VM's QEMU cannot write the configured dump format",
            m.dump_unavailable.clone(),
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
            "peer_refused",
            "Connections refused because the peer is not the VM the configuration names, by VM and reason (symlink, not-a-socket, socket-owner, peer-uid, peer-cgroup, bound-path, name-claim, other)",
            m.peer_refusals.clone(),
        );
        registry.register(
            "name_mismatch",
            "Connections whose QEMU -name differs from the configured or derived VM name, by VM",
            m.name_mismatches.clone(),
        );
        registry.register(
            "notify",
            "--notify commands by result (ok, failed, timeout, error, dropped)",
            m.notify.clone(),
        );
        registry.register(
            "records_dropped",
            "Records not delivered, by VM (empty if none) and sink (notify: the --notify queue was full; log: the log sink was blocked)",
            m.records_dropped.clone(),
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

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Creates a VM's counters of the events with a policy at 0, so that
    /// `increase()` sees its first panic too.
    pub fn init_vm(&self, vm: &str) {
        let mut st = self.state();
        let (vm, rec) = st.vm(vm);
        for event in [
            "GUEST_PANICKED",
            "GUEST_CRASHLOADED",
            "VCPU_STALL",
            "WATCHDOG",
            "SHUTDOWN",
        ] {
            let l = EventLabels {
                vm: vm.clone(),
                event: event.into(),
            };
            let _ = self.events.get_or_create(&l);
            rec.series.insert(Series::Event(l));
        }
    }

    /// `n` events called `event` (an unknown name counts as `other`).
    pub fn event(&self, vm: &str, event: &str, n: u64) {
        let event = event_label(event);
        let mut st = self.state();
        let (vm, rec) = st.vm(vm);
        let l = EventLabels {
            vm,
            event: event.into(),
        };
        self.events.get_or_create(&l).inc_by(n);
        if n > 1 {
            self.coalesced.get_or_create(&l).inc_by(n - 1);
            rec.series.insert(Series::Coalesced(l.clone()));
        }
        rec.series.insert(Series::Event(l));
    }

    /// `n` VCPU_STALL events of `cpu` (its `cpu-index`) at `stage`.
    pub fn stall(&self, vm: &str, cpu: &str, stage: &str, n: u64) {
        let stage = stage_label(stage);
        let mut cpu = cpu_label(cpu);
        let mut st = self.state();
        let (vm, rec) = st.vm(vm);
        if cpu != OTHER && !rec.cpus.contains(&cpu) {
            if rec.cpus.len() >= MAX_CPUS_PER_VM {
                cpu = OTHER.to_string();
            } else {
                rec.cpus.insert(cpu.clone());
            }
        }
        let l = StallLabels {
            vm,
            cpu,
            stage: stage.into(),
        };
        self.stalls.get_or_create(&l).inc_by(n);
        rec.series.insert(Series::Stall(l));
    }

    pub fn action(&self, vm: &str, policy: &str, action: &str, result: &str) {
        let mut st = self.state();
        let (vm, rec) = st.vm(vm);
        let l = ActionLabels {
            vm,
            policy: label_value(policy),
            action: label_value(action),
            result: label_value(result),
        };
        self.actions.get_or_create(&l).inc();
        rec.series.insert(Series::Action(l));
    }

    pub fn protocol_error(&self, vm: &str, kind: &str, n: u64) {
        let mut st = self.state();
        let (vm, rec) = st.vm(vm);
        let l = ProtocolLabels {
            vm,
            kind: label_value(kind),
        };
        self.protocol.get_or_create(&l).inc_by(n);
        rec.series.insert(Series::Protocol(l));
    }

    pub fn result(family: &Family<ResultLabels, Count>, result: &str) {
        family
            .get_or_create(&ResultLabels {
                result: label_value(result),
            })
            .inc();
    }

    /// Sets the endpoint's `vigil_endpoint_connected`; its series of another
    /// VM name (a peer that renamed itself) goes.
    pub fn set_connected(&self, endpoint: &str, vm: &str, up: bool) {
        let endpoint = label_value(endpoint);
        let mut st = self.state();
        let (vm, rec) = st.vm(vm);
        let l = ConnectedLabels {
            endpoint: endpoint.clone(),
            vm: vm.clone(),
        };
        self.connected.get_or_create(&l).set(i64::from(up));
        rec.series.insert(Series::Connected(l));
        if let Some(old) = st.endpoints.insert(endpoint.clone(), vm.clone()) {
            if old != vm {
                Self::drop_connected(&self.connected, &mut st, endpoint, old);
            }
        }
    }

    fn drop_connected(
        family: &Family<ConnectedLabels, Gauge>,
        st: &mut State,
        endpoint: String,
        vm: String,
    ) {
        let l = ConnectedLabels { endpoint, vm };
        family.remove(&l);
        if let Some(rec) = st.vms.get_mut(&l.vm) {
            rec.series.remove(&Series::Connected(l));
        }
    }

    /// Counts a connection made to `endpoint` after its first one.
    pub fn reconnected(&self, endpoint: &str) {
        self.reconnects
            .get_or_create(&EndpointLabels {
                endpoint: label_value(endpoint),
            })
            .inc();
    }

    /// An endpoint that is no longer watched: its series go.
    pub fn forget_endpoint(&self, endpoint: &str, vm: &str) {
        let ep = label_value(endpoint);
        let mut st = self.state();
        let mut vms = vec![label_value(vm), OTHER.to_string()];
        vms.extend(st.endpoints.remove(&ep));
        for vm in vms {
            Self::drop_connected(&self.connected, &mut st, ep.clone(), vm);
        }
        self.reconnects.remove(&EndpointLabels { endpoint: ep });
        // a caller that wrote the family itself used the raw name
        self.reconnects.remove(&EndpointLabels {
            endpoint: endpoint.into(),
        });
    }

    /// A VM that is gone: every series with its `vm` label goes (and its
    /// place among the [`MAX_VMS`]).
    pub fn forget_vm(&self, vm: &str) {
        let vm = label_value(vm);
        let mut st = self.state();
        let Some(rec) = st.vms.remove(&vm) else {
            return;
        };
        st.endpoints.retain(|_, v| *v != vm);
        for s in rec.series {
            match s {
                Series::Event(l) => self.events.remove(&l),
                Series::Coalesced(l) => self.coalesced.remove(&l),
                Series::Stall(l) => self.stalls.remove(&l),
                Series::Action(l) => self.actions.remove(&l),
                Series::Protocol(l) => self.protocol.remove(&l),
                Series::Connected(l) => self.connected.remove(&l),
                Series::Dropped(l) => self.records_dropped.remove(&l),
                Series::Refused(l) => self.peer_refusals.remove(&l),
                Series::DumpTimeouts(l) => self.dump_timeouts.remove(&l),
                Series::DumpUnavailable(l) => self.dump_unavailable.remove(&l),
                Series::NameMismatch(l) => self.name_mismatches.remove(&l),
            };
        }
    }

    /// `n` records not delivered to `sink` (`notify`: the --notify queue;
    /// `log`: a blocked log sink; anything else counts as `other`); `vm` is
    /// None for a record of no VM (`vm=""`).
    pub fn dropped(&self, vm: Option<&str>, sink: &str, n: u64) {
        let sink = match DROP_SINKS.iter().find(|s| **s == sink) {
            Some(s) => s,
            None => OTHER,
        };
        let Some(vm) = vm else {
            self.records_dropped
                .get_or_create(&DroppedLabels {
                    vm: String::new(),
                    sink: sink.into(),
                })
                .inc_by(n);
            return;
        };
        let mut st = self.state();
        let (vm, rec) = st.vm(vm);
        let l = DroppedLabels {
            vm,
            sink: sink.into(),
        };
        self.records_dropped.get_or_create(&l).inc_by(n);
        rec.series.insert(Series::Dropped(l));
    }

    /// A connection refused because the peer is not the VM the configuration
    /// names; `reason` is one of [`REFUSAL_REASONS`] (else counts as `other`).
    pub fn peer_refused(&self, vm: &str, reason: &str) {
        let reason = match REFUSAL_REASONS.binary_search(&reason) {
            Ok(i) => REFUSAL_REASONS[i],
            Err(_) => OTHER,
        };
        let mut st = self.state();
        let (vm, rec) = st.vm(vm);
        let l = RefusedLabels {
            vm,
            reason: reason.into(),
        };
        self.peer_refusals.get_or_create(&l).inc();
        rec.series.insert(Series::Refused(l));
    }

    /// A dump of `vm` that did not finish in time.
    pub fn dump_timeout(&self, vm: &str) {
        let mut st = self.state();
        let (vm, rec) = st.vm(vm);
        let l = VmLabels { vm };
        self.dump_timeouts.get_or_create(&l).inc();
        rec.series.insert(Series::DumpTimeouts(l));
    }

    /// Whether `vm`'s QEMU cannot write the configured dump format.
    pub fn set_dump_unavailable(&self, vm: &str, unavailable: bool) {
        let mut st = self.state();
        let (vm, rec) = st.vm(vm);
        let l = VmLabels { vm };
        self.dump_unavailable
            .get_or_create(&l)
            .set(i64::from(unavailable));
        rec.series.insert(Series::DumpUnavailable(l));
    }

    /// The peer's QEMU `-name` differs from the configured (or derived) name.
    pub fn name_mismatch(&self, vm: &str) {
        let mut st = self.state();
        let (vm, rec) = st.vm(vm);
        let l = VmLabels { vm };
        self.name_mismatches.get_or_create(&l).inc();
        rec.series.insert(Series::NameMismatch(l));
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

/// Limits of the `/metrics` server ([`serve`] uses the defaults).
#[derive(Clone, Copy, Debug)]
pub struct ServeLimits {
    /// A connection's request head must be in within this (5 s).
    pub header_timeout: Duration,
    /// A connection is closed this long after it was accepted (30 s).
    pub connection_timeout: Duration,
    /// Connections open at once (1024): a new one beyond it closes the
    /// oldest that has not sent its request head, or is itself closed if
    /// every open one is being answered.
    pub max_connections: usize,
}

impl Default for ServeLimits {
    fn default() -> Self {
        ServeLimits {
            header_timeout: Duration::from_secs(5),
            connection_timeout: Duration::from_secs(30),
            max_connections: 1024,
        }
    }
}

/// The open connections, by age (accept order).
#[derive(Default)]
struct Conns {
    next: u64,
    open: BTreeMap<u64, Conn>,
}

struct Conn {
    /// Set once its request head is in: it is answering, not idle.
    busy: Arc<AtomicBool>,
    close: CancellationToken,
}

fn lock(conns: &Mutex<Conns>) -> MutexGuard<'_, Conns> {
    conns.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Makes room for one more connection: its id, busy flag and close token,
/// or None if `max` are open and all are answering.
fn admit(
    conns: &Mutex<Conns>,
    cancel: &CancellationToken,
    max: usize,
) -> Option<(u64, Arc<AtomicBool>, CancellationToken)> {
    let mut c = lock(conns);
    if c.open.len() >= max.max(1) {
        let idle = c
            .open
            .iter()
            .find(|(_, conn)| !conn.busy.load(Ordering::Relaxed))
            .map(|(id, _)| *id)?;
        if let Some(old) = c.open.remove(&idle) {
            old.close.cancel();
        }
    }
    let id = c.next;
    c.next += 1;
    let busy = Arc::new(AtomicBool::new(false));
    let close = cancel.child_token();
    c.open.insert(
        id,
        Conn {
            busy: busy.clone(),
            close: close.clone(),
        },
    );
    Some((id, busy, close))
}

/// Serves `/metrics` on `listener` until `cancel`.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>, cancel: CancellationToken) {
    serve_with(listener, metrics, cancel, ServeLimits::default()).await
}

/// [`serve`] with other limits.
pub async fn serve_with(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
    limits: ServeLimits,
) {
    let conns = Arc::new(Mutex::new(Conns::default()));
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(false)
        // the smallest hyper takes: a request head is small
        .max_buf_size(8 << 10);
    loop {
        let (sock, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(_) => { tokio::time::sleep(Duration::from_millis(100)).await; continue }
            },
            _ = cancel.cancelled() => return,
        };
        let Some((id, busy, close)) = admit(&conns, &cancel, limits.max_connections) else {
            continue; // every connection is answering: drop this one
        };
        let metrics = metrics.clone();
        let conns = conns.clone();
        let conn = http.serve_connection(
            TokioIo::new(sock),
            service_fn(move |req| {
                busy.store(true, Ordering::Relaxed);
                std::future::ready(Ok::<_, Infallible>(respond(&metrics, &req)))
            }),
        );
        tokio::spawn(async move {
            tokio::select! {
                _ = tokio::time::timeout(limits.connection_timeout, conn) => {}
                _ = close.cancelled() => {}
            }
            lock(&conns).open.remove(&id);
        });
    }
}

fn respond(metrics: &Metrics, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, ctype: &'static str, body: Bytes| {
        let mut r = Response::new(Full::new(body));
        *r.status_mut() = status;
        r.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static(ctype));
        r
    };
    let method = req.method();
    if method != Method::GET && method != Method::HEAD {
        let mut r = reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            Bytes::from_static(b"method not allowed\n"),
        );
        r.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    match req.uri().path() {
        "/metrics" => {
            let om = req.headers().get_all(ACCEPT).iter().any(|v| {
                v.as_bytes()
                    .windows(28)
                    .any(|w| w == b"application/openmetrics-text")
            });
            // rendered with no lock of ours held; prometheus-client reads
            // each family under its own lock while it encodes it
            if om {
                reply(
                    StatusCode::OK,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    Bytes::from(metrics.openmetrics()),
                )
            } else {
                reply(
                    StatusCode::OK,
                    "text/plain; version=0.0.4; charset=utf-8",
                    Bytes::from(metrics.text()),
                )
            }
        }
        "/" => reply(
            StatusCode::OK,
            "text/plain; charset=utf-8",
            Bytes::from_static(b"vigil: metrics on /metrics\n"),
        ),
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            Bytes::from_static(b"not found\n"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    /// Sends `req` on a new connection and reads the answer to its end.
    async fn get(addr: SocketAddr, req: &str) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(req.as_bytes()).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    async fn start(
        m: Arc<Metrics>,
        limits: ServeLimits,
    ) -> (SocketAddr, CancellationToken, tokio::task::JoinHandle<()>) {
        let l = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = l.local_addr().unwrap();
        let cancel = CancellationToken::new();
        let t = tokio::spawn(serve_with(l, m, cancel.clone(), limits));
        (addr, cancel, t)
    }

    /// The samples of an exposition, as a scraper parses them: `name{k="v",...}
    /// value`, label values with only the `\\`, `\"` and `\n` escapes.
    /// Panics on a line that is not one.
    fn samples(text: &str) -> Vec<(String, Vec<(String, String)>)> {
        let mut out = Vec::new();
        for line in text.lines() {
            if line.starts_with('#') {
                assert!(
                    line.starts_with("# HELP ")
                        || line.starts_with("# TYPE ")
                        || line.starts_with("# UNIT ")
                        || line == "# EOF",
                    "bad comment line: {line:?}"
                );
                continue;
            }
            let name_end = line
                .find(['{', ' '])
                .unwrap_or_else(|| panic!("no value: {line:?}"));
            let name = &line[..name_end];
            assert!(
                !name.is_empty()
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':'),
                "bad name in {line:?}"
            );
            let mut rest = &line[name_end..];
            let mut labels = Vec::new();
            if let Some(r) = rest.strip_prefix('{') {
                rest = r;
                loop {
                    if let Some(r) = rest.strip_prefix('}') {
                        rest = r;
                        break;
                    }
                    let (k, r) = rest
                        .split_once("=\"")
                        .unwrap_or_else(|| panic!("bad label in {line:?}"));
                    assert!(k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'));
                    let mut v = String::new();
                    let mut chars = r.char_indices();
                    let end = loop {
                        match chars.next() {
                            Some((i, '"')) => break i,
                            Some((_, '\\')) => match chars.next() {
                                Some((_, '\\')) => v.push('\\'),
                                Some((_, '"')) => v.push('"'),
                                Some((_, 'n')) => v.push('\n'),
                                other => panic!("bad escape {other:?} in {line:?}"),
                            },
                            Some((_, c)) => v.push(c),
                            None => panic!("unterminated value in {line:?}"),
                        }
                    };
                    labels.push((k.to_string(), v));
                    rest = &r[end + 1..];
                    rest = rest.strip_prefix(',').unwrap_or(rest);
                }
            }
            let value = rest
                .strip_prefix(' ')
                .unwrap_or_else(|| panic!("no value in {line:?}"));
            assert!(value.parse::<f64>().is_ok(), "bad value in {line:?}");
            out.push((name.to_string(), labels));
        }
        out
    }

    fn label_values(text: &str, key: &str) -> HashSet<String> {
        samples(text)
            .into_iter()
            .flat_map(|(_, l)| l)
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v)
            .collect()
    }

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
        samples(&t);
        samples(&om);
        m.forget_endpoint("unix:/run/web1.qmp", "web1");
        assert!(!m.text().contains("web1.qmp"));
    }

    #[test]
    fn known_events_are_qemus_and_others_fold() {
        assert!(
            KNOWN_EVENTS.windows(2).all(|w| w[0] < w[1]),
            "sorted, unique"
        );
        assert_eq!(KNOWN_EVENTS.len(), 58);
        for e in [
            "GUEST_PANICKED",
            "VCPU_STALL",
            "WATCHDOG",
            "SHUTDOWN",
            "RESET",
        ] {
            assert_eq!(event_label(e), e);
        }
        for e in [
            "",
            "guest_panicked",
            "GUEST_PANICKED ",
            "X".repeat(500).as_str(),
        ] {
            assert_eq!(event_label(e), "other");
        }
        let m = Metrics::new();
        m.event("a", "NOT_A_QEMU_EVENT", 1);
        m.event("a", "ALSO_NOT", 2);
        let t = m.text();
        assert!(
            t.contains(r#"vigil_events_total{vm="a",event="other"} 3"#),
            "{t}"
        );
        assert!(t.contains(r#"vigil_events_coalesced_total{vm="a",event="other"} 1"#));
    }

    #[test]
    fn cpu_and_stage_labels_are_closed() {
        assert_eq!(cpu_label("0"), "0");
        assert_eq!(cpu_label("4095"), "4095");
        assert_eq!(cpu_label("007"), "7");
        for c in [
            "4096", "-1", "+1", "1.0", "1e3", "", " 1", "unknown", "99999",
        ] {
            assert_eq!(cpu_label(c), "other", "{c:?}");
        }
        assert_eq!(stage_label("warning"), "warning");
        assert_eq!(stage_label("action"), "action");
        assert_eq!(stage_label("Action"), "unknown");
        let m = Metrics::new();
        m.stall("a", "3", "bogus", 1);
        assert!(m
            .text()
            .contains(r#"vigil_stalls_total{vm="a",cpu="3",stage="unknown"} 1"#));
    }

    #[test]
    fn label_values_are_capped_and_distinct() {
        assert_eq!(label_value("web1"), "web1");
        assert_eq!(label_value("a\tb\u{7f}c\u{85}"), "a?b?c?");
        let long_a = format!("{}a", "é".repeat(300));
        let long_b = format!("{}b", "é".repeat(300));
        let (a, b) = (label_value(&long_a), label_value(&long_b));
        assert!(a.len() <= MAX_LABEL_BYTES && b.len() <= MAX_LABEL_BYTES);
        assert!(a.starts_with("éé") && a.contains('…'), "{a}");
        assert_ne!(a, b, "two long names stay two series");
        assert_eq!(a, label_value(&long_a), "stable");
        let exact = "x".repeat(MAX_LABEL_BYTES);
        assert_eq!(label_value(&exact), exact);
    }

    #[test]
    fn hostile_vm_name_keeps_the_body_parseable_and_small() {
        let m = Metrics::new();
        let vm = format!("a\"b\nc\\d\r\u{0}{}\"\n\\", "x".repeat(500 << 10));
        m.init_vm(&vm);
        m.event(&vm, "GUEST_PANICKED", 2);
        m.stall(&vm, "1", "warning", 1);
        m.action(&vm, "p\"\n", "dump", "started");
        m.protocol_error(&vm, "malformed", 1);
        m.set_connected(&format!("unix:/run/{vm}"), &vm, true);
        m.dropped(Some(&vm), "notify", 1);
        m.peer_refused(&vm, "symlink");
        m.dump_timeout(&vm);
        m.set_dump_unavailable(&vm, true);
        m.name_mismatch(&vm);
        for t in [m.text(), m.openmetrics()] {
            assert!(t.len() < 16 << 10, "{} bytes", t.len());
            let vms = label_values(&t, "vm");
            assert_eq!(vms.len(), 1, "{vms:?}");
            let v = vms.iter().next().unwrap();
            assert!(v.len() <= MAX_LABEL_BYTES, "{v}");
            assert!(v.starts_with("a\"b?c\\d??x"), "{v:?}");
            assert!(!v.chars().any(char::is_control));
            for e in label_values(&t, "endpoint") {
                assert!(e.len() <= MAX_LABEL_BYTES && !e.chars().any(char::is_control));
            }
        }
        m.forget_vm(&vm);
        assert!(label_values(&m.text(), "vm").is_empty());
    }

    #[test]
    fn many_event_names_and_cpus_give_a_bounded_body() {
        let m = Metrics::new();
        m.init_vm("web1");
        for i in 0..20_000 {
            m.event("web1", &format!("EVENT_{i}"), 1);
            m.stall("web1", &i.to_string(), "warning", 1);
            m.stall("web1", &format!("cpu{i}"), "action", 1);
        }
        let (t, om) = (m.text(), m.openmetrics());
        assert!(t.len() < 64 << 10, "{} bytes", t.len());
        assert!(om.len() < 64 << 10, "{} bytes", om.len());
        let cpus = label_values(&t, "cpu");
        assert_eq!(cpus.len(), MAX_CPUS_PER_VM + 1, "the first 256 and other");
        assert!(cpus.contains("0") && cpus.contains("255") && cpus.contains("other"));
        assert!(t.contains(r#"vigil_events_total{vm="web1",event="other"} 20000"#));
    }

    #[test]
    fn forget_vm_removes_its_series() {
        let m = Metrics::new();
        for vm in ["gone", "stays"] {
            m.init_vm(vm);
            m.event(vm, "RESET", 3);
            m.stall(vm, "2", "action", 1);
            m.action(vm, "panic", "dump", "started");
            m.protocol_error(vm, "malformed", 1);
            m.set_connected(&format!("unix:/run/{vm}.qmp"), vm, true);
            m.dropped(Some(vm), "log", 4);
            m.peer_refused(vm, "peer-uid");
            m.dump_timeout(vm);
            m.set_dump_unavailable(vm, true);
            m.name_mismatch(vm);
        }
        m.dropped(None, "notify", 1);
        let before = m.text();
        let families = |t: &str, vm: &str| -> HashSet<String> {
            samples(t)
                .into_iter()
                .filter(|(_, l)| l.iter().any(|(k, v)| k == "vm" && v == vm))
                .map(|(n, _)| n)
                .collect()
        };
        let all: HashSet<String> = [
            "vigil_events_total",
            "vigil_events_coalesced_total",
            "vigil_stalls_total",
            "vigil_actions_total",
            "vigil_protocol_errors_total",
            "vigil_endpoint_connected",
            "vigil_records_dropped_total",
            "vigil_peer_refused_total",
            "vigil_dump_timeouts_total",
            "vigil_dump_unavailable",
            "vigil_name_mismatch_total",
        ]
        .into_iter()
        .map(String::from)
        .collect();
        assert_eq!(families(&before, "gone"), all);
        m.forget_vm("gone");
        let after = m.text();
        assert!(families(&after, "gone").is_empty(), "{after}");
        assert_eq!(families(&after, "stays"), all);
        assert!(after.contains(r#"vigil_records_dropped_total{vm="",sink="notify"} 1"#));
        m.forget_vm("never-seen");
        // it comes back from 0 when it does
        m.event("gone", "RESET", 1);
        assert!(m
            .text()
            .contains(r#"vigil_events_total{vm="gone",event="RESET"} 1"#));
    }

    #[test]
    fn vm_labels_are_capped() {
        let m = Metrics::new();
        for i in 0..MAX_VMS + 10 {
            m.event(&format!("vm{i}"), "RESET", 1);
        }
        let vms = label_values(&m.text(), "vm");
        assert_eq!(vms.len(), MAX_VMS + 1);
        assert!(vms.contains("other") && !vms.contains(&format!("vm{MAX_VMS}")));
        assert!(m
            .text()
            .contains(r#"vigil_events_total{vm="other",event="RESET"} 10"#));
        // a VM that goes frees its place
        m.forget_vm("vm0");
        m.event("newcomer", "RESET", 1);
        let vms = label_values(&m.text(), "vm");
        assert!(vms.contains("newcomer") && !vms.contains("vm0"));
        assert_eq!(vms.len(), MAX_VMS + 1);
    }

    #[test]
    fn renamed_peer_keeps_one_connected_series() {
        let m = Metrics::new();
        for i in 0..100 {
            m.set_connected("unix:/run/a.qmp", &format!("name{i}"), true);
            m.set_connected("unix:/run/a.qmp", &format!("name{i}"), false);
        }
        let t = m.text();
        let connected: Vec<_> = samples(&t)
            .into_iter()
            .filter(|(n, _)| n == "vigil_endpoint_connected")
            .collect();
        assert_eq!(connected.len(), 1, "{t}");
        m.forget_endpoint("unix:/run/a.qmp", "name99");
        assert!(!m.text().contains("vigil_endpoint_connected{"));
    }

    #[test]
    fn new_metrics_are_exported() {
        let m = Metrics::new();
        m.dropped(Some("a"), "notify", 2);
        m.dropped(None, "log", 3);
        m.dropped(Some("a"), "elsewhere", 1);
        m.peer_refused("a", "socket-owner");
        m.peer_refused("a", "made-up");
        m.dump_timeout("a");
        m.set_dump_unavailable("a", true);
        m.set_dump_unavailable("b", false);
        m.name_mismatch("a");
        m.reconnected("unix:/run/a.qmp");
        let t = m.text();
        for want in [
            r#"vigil_records_dropped_total{vm="a",sink="notify"} 2"#,
            r#"vigil_records_dropped_total{vm="",sink="log"} 3"#,
            r#"vigil_records_dropped_total{vm="a",sink="other"} 1"#,
            r#"vigil_peer_refused_total{vm="a",reason="socket-owner"} 1"#,
            r#"vigil_peer_refused_total{vm="a",reason="other"} 1"#,
            r#"vigil_dump_timeouts_total{vm="a"} 1"#,
            r#"vigil_dump_unavailable{vm="a"} 1"#,
            r#"vigil_dump_unavailable{vm="b"} 0"#,
            r#"vigil_name_mismatch_total{vm="a"} 1"#,
            r#"vigil_endpoint_reconnects_total{endpoint="unix:/run/a.qmp"} 1"#,
            "# HELP vigil_records_dropped_total Records not delivered",
            "# HELP vigil_peer_refused_total Connections refused",
            "# HELP vigil_dump_unavailable 1 while",
            "# TYPE vigil_dump_unavailable gauge",
        ] {
            assert!(t.contains(want), "{want} in {t}");
        }
        assert!(REFUSAL_REASONS.windows(2).all(|w| w[0] < w[1]));
        samples(&t);
    }

    #[tokio::test]
    async fn serves_metrics_over_http() {
        let m = Arc::new(Metrics::new());
        m.event("a", "RESET", 1);
        let (addr, cancel, t) = start(m, ServeLimits::default()).await;
        let r = get(addr, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 200 OK"), "{r}");
        assert!(
            r.contains("version=0.0.4")
                && r.contains(r#"vigil_events_total{vm="a",event="RESET"} 1"#)
        );
        let r = get(
            addr,
            "GET /metrics HTTP/1.1\r\nAccept: application/openmetrics-text;version=1.0.0\r\n\r\n",
        )
        .await;
        assert!(
            r.contains("application/openmetrics-text") && r.contains("# EOF"),
            "{r}"
        );
        let r = get(addr, "HEAD /metrics HTTP/1.1\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 200 OK"), "{r}");
        assert!(!r.contains("vigil_events"), "{r}");
        let r = get(addr, "GET / HTTP/1.1\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 200") && r.ends_with("vigil: metrics on /metrics\n"));
        assert!(get(addr, "GET /nope HTTP/1.1\r\n\r\n")
            .await
            .starts_with("HTTP/1.1 404"));
        let r = get(addr, "POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 405"), "{r}");
        assert!(r.to_ascii_lowercase().contains("allow: get, head"), "{r}");
        cancel.cancel();
        t.await.unwrap();
    }

    /// Reads until the server closes the connection; false if it is still
    /// open after `wait`.
    async fn closed_within(s: &mut TcpStream, wait: Duration) -> bool {
        let mut sink = Vec::new();
        tokio::time::timeout(wait, s.read_to_end(&mut sink))
            .await
            .is_ok()
    }

    #[tokio::test]
    async fn scrape_succeeds_while_300_connections_idle() {
        let m = Arc::new(Metrics::new());
        m.event("a", "RESET", 1);
        let limits = ServeLimits {
            header_timeout: Duration::from_secs(3),
            ..ServeLimits::default()
        };
        let (addr, cancel, t) = start(m, limits).await;
        let mut idle = Vec::new();
        for i in 0..300 {
            let mut s = TcpStream::connect(addr).await.unwrap();
            if i % 2 == 1 {
                s.write_all(b"G").await.unwrap();
            }
            idle.push(s);
        }
        let r = tokio::time::timeout(
            Duration::from_secs(10),
            get(addr, "GET /metrics HTTP/1.1\r\n\r\n"),
        )
        .await
        .expect("the scrape was answered");
        assert!(r.starts_with("HTTP/1.1 200 OK"), "{r}");
        assert!(r.contains(r#"vigil_events_total{vm="a",event="RESET"} 1"#));
        // they were still open while it was answered
        assert!(!closed_within(&mut idle[299], Duration::from_millis(50)).await);
        // and go after the header timeout
        for (i, s) in idle.iter_mut().enumerate() {
            assert!(
                closed_within(s, Duration::from_secs(10)).await,
                "idle connection {i} still open"
            );
        }
        cancel.cancel();
        t.await.unwrap();
    }

    #[tokio::test]
    async fn full_server_closes_the_oldest_idle_connection_not_the_scrape() {
        let m = Arc::new(Metrics::new());
        let limits = ServeLimits {
            max_connections: 8,
            header_timeout: Duration::from_secs(60),
            connection_timeout: Duration::from_secs(60),
        };
        let (addr, cancel, t) = start(m, limits).await;
        let mut idle = Vec::new();
        for _ in 0..8 {
            idle.push(TcpStream::connect(addr).await.unwrap());
        }
        for _ in 0..3 {
            let r = tokio::time::timeout(
                Duration::from_secs(10),
                get(addr, "GET /metrics HTTP/1.1\r\n\r\n"),
            )
            .await
            .expect("the scrape was answered");
            assert!(r.starts_with("HTTP/1.1 200 OK"), "{r}");
        }
        // the first scrape closed idle[0]; the next ones found the places
        // the scrapes before them had left
        assert!(closed_within(&mut idle[0], Duration::from_secs(5)).await);
        for s in &mut idle[1..] {
            assert!(!closed_within(s, Duration::from_millis(200)).await);
        }
        cancel.cancel();
        t.await.unwrap();
        // the server's end closes its connections
        assert!(closed_within(&mut idle[7], Duration::from_secs(5)).await);
    }
}
