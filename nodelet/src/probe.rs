//! Health probes of a running task: one check (HTTP GET, TCP connect, or exec through
//! the caller's hook), Kubernetes' startup, liveness and readiness semantics as a pure
//! state machine, and the loop that runs them on tokio time until its caller aborts it.
//!
//! The caller spawns [`run_probes`] when a task's run starts and aborts it when the
//! run ends. Events come over an mpsc channel: [`ProbeEvent::Ready`] when readiness
//! changes (the task is not ready until the first `Ready { ready: true }`), and
//! [`ProbeEvent::Restart`] when a liveness or startup probe failed, after which the
//! loop returns: the caller stops the run under its restart policy and starts a new
//! loop for the next run.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use api_types::{
    HttpGetAction, IntOrString, Probe, ProbeHandler, Protocol, Scheme, TaskSpec, TcpSocketAction,
};
use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt as _;
use futures::stream::FuturesUnordered;
use http_body_util::{BodyExt as _, Empty};
use hyper::header::{ACCEPT, CONNECTION, HOST, HeaderName, HeaderValue, USER_AGENT};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until, timeout};

/// The most bytes of an HTTP probe's response body that are read (and discarded).
pub const MAX_BODY_BYTES: usize = 10 * 1024;

/// The `User-Agent` of HTTP probes, unless the probe sets its own.
pub const USER_AGENT_VALUE: &str = concat!("loom-probe/", env!("CARGO_PKG_VERSION"));

/// Where a task's probes connect: its address, and its named TCP ports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeTarget {
    /// The task's address (probes without a `host` connect here).
    pub ip: Ipv4Addr,
    /// The task's named TCP ports: name → `containerPort`.
    pub ports: BTreeMap<String, u16>,
}

impl ProbeTarget {
    /// The target of a task at `ip` whose spec is `spec`.
    pub fn new(ip: Ipv4Addr, spec: &TaskSpec) -> Self {
        let ports = spec
            .ports
            .iter()
            .filter(|p| !p.name.is_empty() && p.protocol() == Protocol::Tcp)
            .filter_map(|p| {
                let port = u16::try_from(p.container_port).ok().filter(|n| *n != 0)?;
                Some((p.name.clone(), port))
            })
            .collect();
        ProbeTarget { ip, ports }
    }

    /// The port number `port` stands for.
    fn port(&self, port: &IntOrString) -> Result<u16, String> {
        match port {
            IntOrString::Int(n) => u16::try_from(*n)
                .ok()
                .filter(|n| *n != 0)
                .ok_or_else(|| format!("port {n} is not between 1 and 65535")),
            IntOrString::String(name) => self
                .ports
                .get(name)
                .copied()
                .ok_or_else(|| format!("port {name:?} is not one of the task's TCP ports")),
        }
    }
}

/// The outcome of one probe run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeResult {
    /// The check passed.
    Success,
    /// The check failed, and why.
    Failure(String),
}

/// Runs an exec probe's command inside the task. The nodelet plugs in-container
/// exec here once it has it; until then [`NoExec`] fails every exec probe.
#[async_trait]
pub trait ExecProber: Send + Sync + fmt::Debug {
    /// Runs `command` inside the task; exit status 0 is success. The caller also
    /// bounds the call by `timeout`.
    async fn exec(&self, command: &[String], timeout: Duration) -> ProbeResult;
}

/// Fails every exec probe: in-container exec is not there yet.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoExec;

#[async_trait]
impl ExecProber for NoExec {
    async fn exec(&self, _command: &[String], _timeout: Duration) -> ProbeResult {
        ProbeResult::Failure("exec probes are not supported yet".into())
    }
}

fn seconds(value: i32) -> Duration {
    Duration::from_secs(u64::try_from(value).unwrap_or(0))
}

/// Runs `probe` once against `target`, within the probe's `timeoutSeconds`.
pub async fn check(probe: &Probe, target: &ProbeTarget, exec: &dyn ExecProber) -> ProbeResult {
    let limit = seconds(probe.timeout_seconds()).max(Duration::from_secs(1));
    match probe.handler() {
        None => ProbeResult::Failure(
            "the probe must have exactly one of exec, httpGet, tcpSocket".into(),
        ),
        Some(ProbeHandler::Exec(action)) => {
            match timeout(limit, exec.exec(&action.command, limit)).await {
                Ok(result) => result,
                Err(_) => ProbeResult::Failure(format!(
                    "exec {:?}: no result within {}s",
                    action.command,
                    limit.as_secs()
                )),
            }
        }
        Some(ProbeHandler::HttpGet(action)) => http_get(action, target, limit).await,
        Some(ProbeHandler::TcpSocket(action)) => tcp_socket(action, target, limit).await,
    }
}

/// `host:port`, IPv6 addresses in brackets; the task's address when `host` is empty.
fn authority(host: &str, target: &ProbeTarget, port: u16) -> String {
    if host.is_empty() {
        format!("{}:{port}", target.ip)
    } else if let Ok(IpAddr::V6(v6)) = host.parse::<IpAddr>() {
        format!("[{v6}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// The address to connect to: the task's, an IP literal, or a DNS name looked up.
async fn resolve(host: &str, target: &ProbeTarget, port: u16) -> Result<SocketAddr, String> {
    if host.is_empty() {
        return Ok(SocketAddr::from((target.ip, port)));
    }
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| format!("cannot resolve {host}: {e}"))?
        .next()
        .ok_or_else(|| format!("cannot resolve {host}: no address"))
}

async fn tcp_socket(
    action: &TcpSocketAction,
    target: &ProbeTarget,
    limit: Duration,
) -> ProbeResult {
    let port = match target.port(&action.port) {
        Ok(port) => port,
        Err(e) => return ProbeResult::Failure(e),
    };
    let shown = authority(&action.host, target, port);
    let connect = async {
        let addr = resolve(&action.host, target, port).await?;
        TcpStream::connect(addr).await.map_err(|e| e.to_string())
    };
    match timeout(limit, connect).await {
        Ok(Ok(_stream)) => ProbeResult::Success,
        Ok(Err(e)) => ProbeResult::Failure(format!("TCP connect to {shown}: {e}")),
        Err(_) => ProbeResult::Failure(format!(
            "TCP connect to {shown}: no connection within {}s",
            limit.as_secs()
        )),
    }
}

async fn http_get(action: &HttpGetAction, target: &ProbeTarget, limit: Duration) -> ProbeResult {
    if action.scheme() != Scheme::Http {
        return ProbeResult::Failure(format!(
            "{} probes are not supported yet",
            action.scheme().as_str()
        ));
    }
    let port = match target.port(&action.port) {
        Ok(port) => port,
        Err(e) => return ProbeResult::Failure(e),
    };
    let host = authority(&action.host, target, port);
    let url = format!("http://{host}{}", action.path());
    let exchange = async {
        let addr = resolve(&action.host, target, port).await?;
        get(action, addr, &host).await
    };
    match timeout(limit, exchange).await {
        Ok(Ok(status)) if (200..400).contains(&status.as_u16()) => ProbeResult::Success,
        Ok(Ok(status)) => ProbeResult::Failure(format!("HTTP GET {url}: status {status}")),
        Ok(Err(e)) => ProbeResult::Failure(format!("HTTP GET {url}: {e}")),
        Err(_) => ProbeResult::Failure(format!(
            "HTTP GET {url}: no response within {}s",
            limit.as_secs()
        )),
    }
}

/// The request of an HTTP probe: the defaults a probe's own headers may replace
/// (`Host`, `User-Agent`, `Accept`), then the probe's headers.
fn request(action: &HttpGetAction, host: &str) -> Result<Request<Empty<Bytes>>, String> {
    let mut request = Request::builder()
        .method(Method::GET)
        .uri(action.path())
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("path {:?} is not a URL path: {e}", action.path()))?;
    let mut own = Vec::with_capacity(action.http_headers.len());
    for header in &action.http_headers {
        let name = HeaderName::from_bytes(header.name.as_bytes())
            .map_err(|_| format!("header name {:?} is not valid", header.name))?;
        let value = HeaderValue::from_str(&header.value)
            .map_err(|_| format!("header {:?} has an invalid value", header.name))?;
        own.push((name, value));
    }
    let headers = request.headers_mut();
    let defaults = [
        (
            HOST,
            HeaderValue::from_str(host).map_err(|_| format!("host {host:?} is not valid"))?,
        ),
        (USER_AGENT, HeaderValue::from_static(USER_AGENT_VALUE)),
        (ACCEPT, HeaderValue::from_static("*/*")),
    ];
    for (name, value) in defaults {
        if !own.iter().any(|(n, _)| *n == name) {
            headers.insert(name, value);
        }
    }
    for (name, value) in own {
        headers.append(name, value);
    }
    // One request per connection: nothing is kept between runs.
    headers.insert(CONNECTION, HeaderValue::from_static("close"));
    Ok(request)
}

/// Sends the probe's GET to `addr`; the status, once the head and up to
/// [`MAX_BODY_BYTES`] of the body are read. No redirect is followed.
async fn get(action: &HttpGetAction, addr: SocketAddr, host: &str) -> Result<StatusCode, String> {
    let request = request(action, host)?;
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect to {addr}: {e}"))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    let exchange = async {
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status();
        let mut body = response.into_body();
        let mut read = 0usize;
        // The server answered: a body cut short does not change the status.
        while read < MAX_BODY_BYTES {
            match body.frame().await {
                Some(Ok(frame)) => read += frame.data_ref().map_or(0, Bytes::len),
                Some(Err(_)) | None => break,
            }
        }
        Ok(status)
    };
    // The connection is driven here rather than spawned, so that aborting the
    // probe loop leaves nothing behind.
    tokio::pin!(exchange, connection);
    let mut connection_done = false;
    loop {
        tokio::select! {
            biased;
            result = &mut exchange => return result,
            // A failed connection fails the exchange too, with the request's error.
            _ = &mut connection, if !connection_done => connection_done = true,
        }
    }
}

/// Which of a task's probes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ProbeKind {
    /// `startupProbe`.
    Startup,
    /// `livenessProbe`.
    Liveness,
    /// `readinessProbe`.
    Readiness,
}

impl ProbeKind {
    /// The probe's name in messages: `startup`, `liveness`, `readiness`.
    pub fn as_str(&self) -> &'static str {
        match self {
            ProbeKind::Startup => "startup",
            ProbeKind::Liveness => "liveness",
            ProbeKind::Readiness => "readiness",
        }
    }
}

impl fmt::Display for ProbeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The probes of one task.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TaskProbes {
    /// `startupProbe`.
    pub startup: Option<Probe>,
    /// `livenessProbe`.
    pub liveness: Option<Probe>,
    /// `readinessProbe`.
    pub readiness: Option<Probe>,
}

impl TaskProbes {
    /// The probes of a task's spec.
    pub fn of(spec: &TaskSpec) -> Self {
        TaskProbes {
            startup: spec.startup_probe.clone(),
            liveness: spec.liveness_probe.clone(),
            readiness: spec.readiness_probe.clone(),
        }
    }

    /// The probe of `kind`, if the task has one.
    pub fn get(&self, kind: ProbeKind) -> Option<&Probe> {
        match kind {
            ProbeKind::Startup => self.startup.as_ref(),
            ProbeKind::Liveness => self.liveness.as_ref(),
            ProbeKind::Readiness => self.readiness.as_ref(),
        }
    }
}

/// What the probes decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeEvent {
    /// The task became ready, or is not ready: `message` says which probe failed
    /// and how. Also sent, once per streak, when the readiness probe reaches its
    /// failure threshold while the task is not ready yet, so the caller can say why.
    Ready {
        /// Whether the task is ready.
        ready: bool,
        /// Why it is not ready (empty when ready).
        message: String,
    },
    /// A liveness or startup probe failed: the run must be stopped (and restarted
    /// under the task's restart policy). Preceded by `Ready { ready: false }` when
    /// the task was ready; the loop ends after this.
    Restart {
        /// The probe that failed.
        probe: ProbeKind,
        /// The probe and its last failure, for an Event and the task's status.
        message: String,
        /// The probe's `terminationGracePeriodSeconds`, to use instead of the task's.
        grace_period_seconds: Option<i64>,
    },
}

/// Consecutive results of one probe.
#[derive(Debug, Clone, Copy, Default)]
struct Streak {
    successes: u32,
    failures: u32,
}

impl Streak {
    fn record(&mut self, success: bool) {
        if success {
            self.successes = self.successes.saturating_add(1);
            self.failures = 0;
        } else {
            self.failures = self.failures.saturating_add(1);
            self.successes = 0;
        }
    }
}

fn threshold(value: i32) -> u32 {
    u32::try_from(value).unwrap_or(1).max(1)
}

/// Kubernetes' probe semantics for one run of a task, without time: feed it each
/// result, and it says what changed. The startup probe (if any) runs first;
/// liveness and readiness start once it passed. Readiness starts false and
/// becomes true after `successThreshold` consecutive successes; it becomes false
/// again after `failureThreshold` consecutive failures. `failureThreshold`
/// consecutive liveness or startup failures ask for a restart.
#[derive(Debug, Clone)]
pub struct ProbeState {
    probes: TaskProbes,
    started: bool,
    ready: bool,
    restarting: bool,
    streaks: BTreeMap<ProbeKind, Streak>,
}

impl ProbeState {
    /// The state of a run that just started, and the events already known: the
    /// task is ready at once if it has neither a startup nor a readiness probe.
    pub fn new(probes: TaskProbes) -> (Self, Vec<ProbeEvent>) {
        let mut state = ProbeState {
            started: probes.startup.is_none(),
            probes,
            ready: false,
            restarting: false,
            streaks: BTreeMap::new(),
        };
        let events = state.readiness_without_probe();
        (state, events)
    }

    /// Once started, a task without a readiness probe is ready.
    fn readiness_without_probe(&mut self) -> Vec<ProbeEvent> {
        if self.started && self.probes.readiness.is_none() && !self.ready {
            self.ready = true;
            vec![ProbeEvent::Ready {
                ready: true,
                message: String::new(),
            }]
        } else {
            Vec::new()
        }
    }

    /// Whether the startup probe passed (or there is none).
    pub fn has_started(&self) -> bool {
        self.started
    }

    /// Whether the task is ready.
    pub fn is_ready(&self) -> bool {
        self.ready
    }

    /// Whether the probe of `kind` runs now: the task has it, no restart was asked
    /// for, and it is the startup probe before the task started, or another after.
    pub fn is_active(&self, kind: ProbeKind) -> bool {
        self.probes.get(kind).is_some()
            && !self.restarting
            && (kind == ProbeKind::Startup) != self.started
    }

    /// Records one result of the probe of `kind`; what changed. Results of a
    /// probe that is not active are ignored.
    pub fn record(&mut self, kind: ProbeKind, result: &ProbeResult) -> Vec<ProbeEvent> {
        let Some(probe) = self.probes.get(kind) else {
            return Vec::new();
        };
        if !self.is_active(kind) {
            return Vec::new();
        }
        let success_threshold = threshold(probe.success_threshold());
        let failure_threshold = threshold(probe.failure_threshold());
        let grace_period_seconds = probe.termination_grace_period_seconds;
        let streak = self.streaks.entry(kind).or_default();
        streak.record(*result == ProbeResult::Success);
        let streak = *streak;
        let reason = match result {
            ProbeResult::Success => None,
            ProbeResult::Failure(reason) => Some(reason.as_str()),
        };
        match (kind, reason) {
            (ProbeKind::Startup, None) => {
                self.started = true;
                self.readiness_without_probe()
            }
            (ProbeKind::Liveness, None) => Vec::new(),
            (ProbeKind::Startup | ProbeKind::Liveness, Some(reason)) => {
                if streak.failures < failure_threshold {
                    return Vec::new();
                }
                self.restarting = true;
                let mut events = Vec::new();
                if self.ready {
                    self.ready = false;
                    events.push(ProbeEvent::Ready {
                        ready: false,
                        message: format!("{kind} probe failed: {reason}"),
                    });
                }
                events.push(ProbeEvent::Restart {
                    probe: kind,
                    message: format!(
                        "{kind} probe failed {} time{} in a row: {reason}",
                        streak.failures,
                        if streak.failures == 1 { "" } else { "s" }
                    ),
                    grace_period_seconds,
                });
                events
            }
            (ProbeKind::Readiness, None) => {
                if !self.ready && streak.successes >= success_threshold {
                    self.ready = true;
                    vec![ProbeEvent::Ready {
                        ready: true,
                        message: String::new(),
                    }]
                } else {
                    Vec::new()
                }
            }
            (ProbeKind::Readiness, Some(reason)) => {
                if streak.failures == failure_threshold {
                    self.ready = false;
                    vec![ProbeEvent::Ready {
                        ready: false,
                        message: format!("readiness probe failed: {reason}"),
                    }]
                } else {
                    Vec::new()
                }
            }
        }
    }
}

/// Runs one probe: the network checks of [`check`], or a double in tests.
#[async_trait]
pub trait Prober: Send + Sync {
    /// Runs `probe` (the task's probe of `kind`) once.
    async fn probe(&self, kind: ProbeKind, probe: &Probe) -> ProbeResult;
}

/// The real prober: [`check`] against a task's address.
#[derive(Debug, Clone)]
pub struct NetworkProber {
    /// Where the task listens.
    pub target: ProbeTarget,
    /// How exec probes run.
    pub exec: Arc<dyn ExecProber>,
}

#[async_trait]
impl Prober for NetworkProber {
    async fn probe(&self, _kind: ProbeKind, probe: &Probe) -> ProbeResult {
        check(probe, &self.target, self.exec.as_ref()).await
    }
}

/// Runs a task's probes against `target` until a restart is asked for, nothing is
/// left to probe, or `events` is closed; the caller spawns it when the run starts
/// and aborts it when the run ends.
pub async fn run_probes(
    probes: TaskProbes,
    target: ProbeTarget,
    exec: Arc<dyn ExecProber>,
    events: mpsc::Sender<ProbeEvent>,
) {
    let prober = NetworkProber { target, exec };
    run_with(probes, &prober, Instant::now(), events).await;
}

type Running<'a> = Pin<Box<dyn Future<Output = (ProbeKind, Instant, ProbeResult)> + Send + 'a>>;

/// The next time after `scheduled` on its period's grid that is not in the past:
/// a run that took longer than the period skips the ticks it missed.
fn next_after(scheduled: Instant, period: Duration, now: Instant) -> Instant {
    let mut next = scheduled + period;
    while next < now {
        next += period;
    }
    next
}

/// [`run_probes`] with any [`Prober`], for a run that started at `start` (now for
/// a new run; earlier for a run found running after a nodelet restart). Each probe
/// first runs `initialDelaySeconds` after `start` (liveness and readiness not
/// before the startup probe passed, then at once), then every `periodSeconds`; at
/// most one run of each probe at a time, and the probes run concurrently.
pub async fn run_with(
    probes: TaskProbes,
    prober: &dyn Prober,
    start: Instant,
    events: mpsc::Sender<ProbeEvent>,
) {
    let (mut state, initial) = ProbeState::new(probes.clone());
    for event in initial {
        if events.send(event).await.is_err() {
            return;
        }
    }
    let kinds = [
        ProbeKind::Startup,
        ProbeKind::Liveness,
        ProbeKind::Readiness,
    ];
    let first = |kind: ProbeKind, not_before: Instant| {
        let delay = probes.get(kind).map_or(0, Probe::initial_delay_seconds);
        (start + seconds(delay)).max(not_before)
    };
    let mut due: BTreeMap<ProbeKind, Instant> = kinds
        .into_iter()
        .filter(|kind| state.is_active(*kind))
        .map(|kind| (kind, first(kind, start)))
        .collect();
    let mut running: FuturesUnordered<Running<'_>> = FuturesUnordered::new();
    loop {
        let next = due.values().min().copied();
        tokio::select! {
            Some((kind, scheduled, result)) = running.next(), if !running.is_empty() => {
                let now = Instant::now();
                let was_started = state.has_started();
                if let ProbeResult::Failure(reason) = &result {
                    tracing::debug!(probe = %kind, %reason, "probe failed");
                }
                let changes = state.record(kind, &result);
                let restart = changes.iter().any(|e| matches!(e, ProbeEvent::Restart { .. }));
                for event in changes {
                    if events.send(event).await.is_err() {
                        return;
                    }
                }
                if restart {
                    return;
                }
                if state.is_active(kind)
                    && let Some(probe) = probes.get(kind)
                {
                    let period = seconds(probe.period_seconds()).max(Duration::from_secs(1));
                    due.insert(kind, next_after(scheduled, period, now));
                }
                if !was_started && state.has_started() {
                    for kind in [ProbeKind::Liveness, ProbeKind::Readiness] {
                        if state.is_active(kind) {
                            due.insert(kind, first(kind, now));
                        }
                    }
                }
            }
            () = sleep_until(next.unwrap_or(start)), if next.is_some() => {
                let now = Instant::now();
                let ready: Vec<(ProbeKind, Instant)> =
                    due.iter().filter(|(_, at)| **at <= now).map(|(k, at)| (*k, *at)).collect();
                for (kind, scheduled) in ready {
                    due.remove(&kind);
                    let Some(probe) = probes.get(kind) else { continue };
                    running.push(Box::pin(async move {
                        (kind, scheduled, prober.probe(kind, probe).await)
                    }));
                }
            }
            () = events.closed() => return,
            else => return,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    use ProbeResult::Success as Ok_;
    use api_types::{ContainerPort, ExecAction, HttpHeader};
    use axum::Router;
    use axum::http::HeaderMap;
    use axum::response::Redirect;
    use axum::routing::get as route;

    // ---- checks against real listeners ----

    fn http(path: &str, port: IntOrString) -> Probe {
        Probe {
            http_get: Some(HttpGetAction {
                path: path.into(),
                port,
                ..HttpGetAction::default()
            }),
            timeout_seconds: Some(1),
            ..Probe::default()
        }
    }

    fn tcp(port: IntOrString) -> Probe {
        Probe {
            tcp_socket: Some(TcpSocketAction {
                port,
                host: String::new(),
            }),
            timeout_seconds: Some(1),
            ..Probe::default()
        }
    }

    fn localhost(ports: &[(&str, u16)]) -> ProbeTarget {
        ProbeTarget {
            ip: Ipv4Addr::LOCALHOST,
            ports: ports.iter().map(|(n, p)| ((*n).to_owned(), *p)).collect(),
        }
    }

    /// A server on 127.0.0.1:0 answering 200, 500, a redirect, slowly, a large body;
    /// `/headers` records the request's headers. Aborted when the test ends.
    struct Server {
        port: u16,
        headers: Arc<Mutex<Vec<HeaderMap>>>,
        task: tokio::task::JoinHandle<()>,
    }

    impl Drop for Server {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    async fn server() -> Server {
        let headers = Arc::new(Mutex::new(Vec::new()));
        let recorded = headers.clone();
        let app = Router::new()
            .route("/ok", route(|| async { "ok" }))
            .route(
                "/fail",
                route(|| async { (StatusCode::INTERNAL_SERVER_ERROR, "down") }),
            )
            .route("/missing", route(|| async { StatusCode::NOT_FOUND }))
            .route(
                "/redirect",
                route(|| async { Redirect::temporary("/fail") }),
            )
            .route(
                "/slow",
                route(|| async {
                    tokio::time::sleep(Duration::from_secs(30)).await;
                    "late"
                }),
            )
            .route("/big", route(|| async { vec![b'x'; 1 << 20] }))
            .route(
                "/headers",
                route(move |h: HeaderMap| {
                    let recorded = recorded.clone();
                    async move {
                        recorded.lock().unwrap().push(h);
                        "seen"
                    }
                }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Server {
            port,
            headers,
            task,
        }
    }

    /// A port nothing listens on: bound, then closed.
    async fn closed_port() -> u16 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap().port()
    }

    fn failure(result: ProbeResult) -> String {
        match result {
            ProbeResult::Failure(reason) => reason,
            ProbeResult::Success => panic!("expected a failure"),
        }
    }

    #[tokio::test]
    async fn http_probes_pass_on_2xx_and_3xx_and_fail_otherwise() {
        let s = server().await;
        let target = localhost(&[("http", s.port)]);
        let port = IntOrString::Int(i32::from(s.port));
        assert_eq!(
            check(&http("/ok", port.clone()), &target, &NoExec).await,
            ProbeResult::Success
        );
        assert_eq!(
            check(&http("/ok", "http".into()), &target, &NoExec).await,
            ProbeResult::Success
        );
        // A redirect is success and is not followed (it points at /fail).
        assert_eq!(
            check(&http("/redirect", port.clone()), &target, &NoExec).await,
            ProbeResult::Success
        );
        // A body far over the limit is cut short, not a failure.
        assert_eq!(
            check(&http("/big", port.clone()), &target, &NoExec).await,
            ProbeResult::Success
        );
        assert_eq!(
            failure(check(&http("/fail", port.clone()), &target, &NoExec).await),
            format!(
                "HTTP GET http://127.0.0.1:{}/fail: status 500 Internal Server Error",
                s.port
            )
        );
        assert_eq!(
            failure(check(&http("/missing", port), &target, &NoExec).await),
            format!(
                "HTTP GET http://127.0.0.1:{}/missing: status 404 Not Found",
                s.port
            )
        );
    }

    #[tokio::test]
    async fn an_http_probe_slower_than_its_timeout_fails() {
        let s = server().await;
        let target = localhost(&[]);
        let began = std::time::Instant::now();
        let reason = failure(
            check(
                &http("/slow", IntOrString::Int(i32::from(s.port))),
                &target,
                &NoExec,
            )
            .await,
        );
        assert_eq!(
            reason,
            format!(
                "HTTP GET http://127.0.0.1:{}/slow: no response within 1s",
                s.port
            )
        );
        let took = began.elapsed();
        assert!(
            took >= Duration::from_secs(1) && took < Duration::from_secs(10),
            "{took:?}"
        );

        // A peer that accepts and never answers.
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = silent.local_addr().unwrap().port();
        let holder = tokio::spawn(async move {
            let (_conn, _) = silent.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(30)).await;
        });
        let reason = failure(
            check(
                &http("/", IntOrString::Int(i32::from(port))),
                &target,
                &NoExec,
            )
            .await,
        );
        holder.abort();
        assert!(reason.ends_with("no response within 1s"), "{reason}");
    }

    #[tokio::test]
    async fn http_probes_send_host_and_the_probe_headers() {
        let s = server().await;
        let target = localhost(&[]);
        let mut probe = http("/headers", IntOrString::Int(i32::from(s.port)));
        assert_eq!(check(&probe, &target, &NoExec).await, ProbeResult::Success);
        if let Some(h) = probe.http_get.as_mut() {
            h.http_headers = vec![
                HttpHeader {
                    name: "Host".into(),
                    value: "web.example".into(),
                },
                HttpHeader {
                    name: "X-Probe".into(),
                    value: "a".into(),
                },
                HttpHeader {
                    name: "x-probe".into(),
                    value: "b".into(),
                },
            ];
        }
        assert_eq!(check(&probe, &target, &NoExec).await, ProbeResult::Success);
        let seen = s.headers.lock().unwrap().clone();
        assert_eq!(seen.len(), 2);
        assert_eq!(seen[0]["host"], format!("127.0.0.1:{}", s.port).as_str());
        assert_eq!(seen[0]["user-agent"], USER_AGENT_VALUE);
        assert_eq!(seen[1]["host"], "web.example");
        assert_eq!(
            seen[1].get_all("host").iter().count(),
            1,
            "the probe's Host replaces ours"
        );
        let probes: Vec<_> = seen[1].get_all("x-probe").iter().collect();
        assert_eq!(probes, ["a", "b"]);
    }

    #[tokio::test]
    async fn http_probes_name_what_is_wrong_when_they_cannot_run() {
        let target = localhost(&[]);
        let port = closed_port().await;
        let reason = failure(
            check(
                &http("/", IntOrString::Int(i32::from(port))),
                &target,
                &NoExec,
            )
            .await,
        );
        assert!(
            reason.starts_with(&format!(
                "HTTP GET http://127.0.0.1:{port}/: connect to 127.0.0.1:{port}: "
            )),
            "{reason}"
        );
        assert!(reason.to_lowercase().contains("refused"), "{reason}");
        assert_eq!(
            failure(check(&http("/", "admin".into()), &target, &NoExec).await),
            "port \"admin\" is not one of the task's TCP ports"
        );
        let mut https = http("/", IntOrString::Int(443));
        if let Some(h) = https.http_get.as_mut() {
            h.scheme = Some(Scheme::Https);
        }
        assert_eq!(
            failure(check(&https, &target, &NoExec).await),
            "HTTPS probes are not supported yet"
        );
        assert_eq!(
            failure(check(&http("/", IntOrString::Int(0)), &target, &NoExec).await),
            "port 0 is not between 1 and 65535"
        );
        assert_eq!(
            failure(check(&Probe::default(), &target, &NoExec).await),
            "the probe must have exactly one of exec, httpGet, tcpSocket"
        );
    }

    #[tokio::test]
    async fn tcp_probes_pass_when_something_listens() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let open = listener.local_addr().unwrap().port();
        let target = ProbeTarget::new(
            Ipv4Addr::LOCALHOST,
            &TaskSpec {
                ports: vec![
                    ContainerPort {
                        name: "db".into(),
                        container_port: i32::from(open),
                        ..ContainerPort::default()
                    },
                    ContainerPort {
                        name: "dns".into(),
                        container_port: 53,
                        protocol: Some(Protocol::Udp),
                        ..ContainerPort::default()
                    },
                ],
                ..TaskSpec::default()
            },
        );
        assert_eq!(
            target.ports,
            BTreeMap::from([("db".to_owned(), open)]),
            "UDP ports are not probed"
        );
        assert_eq!(
            check(&tcp("db".into()), &target, &NoExec).await,
            ProbeResult::Success
        );
        assert_eq!(
            check(&tcp(IntOrString::Int(i32::from(open))), &target, &NoExec).await,
            ProbeResult::Success
        );
        drop(listener);
        let reason = failure(check(&tcp("db".into()), &target, &NoExec).await);
        assert!(
            reason.starts_with(&format!("TCP connect to 127.0.0.1:{open}: ")),
            "{reason}"
        );
        assert!(reason.to_lowercase().contains("refused"), "{reason}");
        let mut elsewhere = tcp(IntOrString::Int(i32::from(closed_port().await)));
        if let Some(t) = elsewhere.tcp_socket.as_mut() {
            t.host = "127.0.0.1".into();
        }
        assert!(matches!(
            check(&elsewhere, &target, &NoExec).await,
            ProbeResult::Failure(_)
        ));
    }

    #[derive(Debug)]
    struct ExitCode(i32);

    #[async_trait]
    impl ExecProber for ExitCode {
        async fn exec(&self, command: &[String], _timeout: Duration) -> ProbeResult {
            match self.0 {
                0 => ProbeResult::Success,
                code => ProbeResult::Failure(format!("{command:?} exited {code}")),
            }
        }
    }

    #[tokio::test]
    async fn exec_probes_go_through_the_callers_hook() {
        let probe = Probe {
            exec: Some(ExecAction {
                command: vec!["cat".into(), "/tmp/ready".into()],
            }),
            ..Probe::default()
        };
        let target = localhost(&[]);
        assert_eq!(
            failure(check(&probe, &target, &NoExec).await),
            "exec probes are not supported yet"
        );
        assert_eq!(
            check(&probe, &target, &ExitCode(0)).await,
            ProbeResult::Success
        );
        assert_eq!(
            failure(check(&probe, &target, &ExitCode(1)).await),
            "[\"cat\", \"/tmp/ready\"] exited 1"
        );
    }

    // ---- the state machine and the loop, on paused time ----

    /// A prober whose results come from a script per probe (the last one repeats),
    /// recording when each probe ran.
    #[derive(Default)]
    struct Script {
        results: Mutex<BTreeMap<ProbeKind, Vec<ProbeResult>>>,
        calls: Mutex<Vec<(ProbeKind, Duration)>>,
        start: Mutex<Option<Instant>>,
        takes: Duration,
    }

    impl Script {
        fn new(results: &[(ProbeKind, Vec<ProbeResult>)]) -> Self {
            Script {
                results: Mutex::new(results.iter().cloned().collect()),
                start: Mutex::new(Some(Instant::now())),
                ..Script::default()
            }
        }

        fn calls(&self, kind: ProbeKind) -> Vec<u64> {
            self.calls
                .lock()
                .unwrap()
                .iter()
                .filter(|(k, _)| *k == kind)
                .map(|(_, at)| at.as_secs())
                .collect()
        }
    }

    #[async_trait]
    impl Prober for Script {
        async fn probe(&self, kind: ProbeKind, _probe: &Probe) -> ProbeResult {
            let start = self.start.lock().unwrap().unwrap();
            self.calls.lock().unwrap().push((kind, start.elapsed()));
            if !self.takes.is_zero() {
                tokio::time::sleep(self.takes).await;
            }
            let mut results = self.results.lock().unwrap();
            let script = results.get_mut(&kind).unwrap();
            if script.len() > 1 {
                script.remove(0)
            } else {
                script[0].clone()
            }
        }
    }

    fn fail(reason: &str) -> ProbeResult {
        ProbeResult::Failure(reason.into())
    }

    fn every(period: i32, delay: i32) -> Probe {
        Probe {
            period_seconds: Some(period),
            initial_delay_seconds: Some(delay),
            ..tcp(IntOrString::Int(80))
        }
    }

    /// Runs the loop to its end (or `limit`) and returns the events with the
    /// second (since the start) each came at.
    async fn events_of(
        probes: TaskProbes,
        script: &Script,
        limit: Duration,
    ) -> Vec<(u64, ProbeEvent)> {
        let (tx, mut rx) = mpsc::channel(16);
        let start = Instant::now();
        let run = run_with(probes, script, start, tx);
        tokio::pin!(run);
        let mut seen = Vec::new();
        let deadline = tokio::time::sleep(limit);
        tokio::pin!(deadline);
        let mut finished = false;
        loop {
            tokio::select! {
                () = &mut run, if !finished => finished = true,
                event = rx.recv() => match event {
                    Some(e) => seen.push((start.elapsed().as_secs(), e)),
                    None => break,
                },
                () = &mut deadline => break,
            }
        }
        seen
    }

    fn ready(ready: bool, message: &str) -> ProbeEvent {
        ProbeEvent::Ready {
            ready,
            message: message.into(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn without_probes_a_task_is_ready_at_once_and_the_loop_ends() {
        let script = Script::new(&[]);
        let events = events_of(TaskProbes::default(), &script, Duration::from_secs(3600)).await;
        assert_eq!(events, [(0, ready(true, ""))]);
    }

    #[tokio::test(start_paused = true)]
    async fn readiness_waits_for_the_delay_and_the_success_threshold_then_follows_failures() {
        let probes = TaskProbes {
            readiness: Some(Probe {
                success_threshold: Some(2),
                failure_threshold: Some(2),
                ..every(10, 5)
            }),
            ..TaskProbes::default()
        };
        // At 5, 15 (ready), 25, 35 (not ready), 45, 55 (a failure resets the
        // successes), 65, 75 (ready again).
        let script = Script::new(&[(
            ProbeKind::Readiness,
            vec![Ok_, Ok_, fail("a"), fail("b"), Ok_, fail("c"), Ok_, Ok_],
        )]);
        let events = events_of(probes, &script, Duration::from_secs(80)).await;
        assert_eq!(
            events,
            [
                (15, ready(true, "")),
                (35, ready(false, "readiness probe failed: b")),
                (75, ready(true, "")),
            ]
        );
        assert_eq!(
            script.calls(ProbeKind::Readiness),
            [5, 15, 25, 35, 45, 55, 65, 75]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_readiness_probe_that_never_passes_says_why_once() {
        let probes = TaskProbes {
            readiness: Some(every(1, 0)),
            ..TaskProbes::default()
        };
        let script = Script::new(&[(ProbeKind::Readiness, vec![fail("refused")])]);
        let events = events_of(probes, &script, Duration::from_secs(60)).await;
        assert_eq!(
            events,
            [(2, ready(false, "readiness probe failed: refused"))]
        );
        // It keeps running, once a second.
        let calls = script.calls(ProbeKind::Readiness);
        assert_eq!(calls[..10], [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
        assert!(calls.len() >= 60, "{calls:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn liveness_failures_in_a_row_ask_for_a_restart_naming_the_probe() {
        let probes = TaskProbes {
            liveness: Some(Probe {
                termination_grace_period_seconds: Some(7),
                ..every(10, 30)
            }),
            ..TaskProbes::default()
        };
        // A success in between resets the count: failures at 30, 40, (50 ok), 60, 70, 80.
        let script = Script::new(&[(
            ProbeKind::Liveness,
            vec![
                fail("x"),
                fail("x"),
                Ok_,
                fail("x"),
                fail("y"),
                fail("HTTP GET http://10.0.0.2:80/: status 500"),
            ],
        )]);
        let events = events_of(probes, &script, Duration::from_secs(3600)).await;
        assert_eq!(
            events,
            [
                (0, ready(true, "")),
                // A task being restarted is not ready.
                (
                    80,
                    ready(
                        false,
                        "liveness probe failed: HTTP GET http://10.0.0.2:80/: status 500"
                    )
                ),
                (
                    80,
                    ProbeEvent::Restart {
                        probe: ProbeKind::Liveness,
                        message: "liveness probe failed 3 times in a row: HTTP GET http://10.0.0.2:80/: status 500".into(),
                        grace_period_seconds: Some(7),
                    }
                ),
            ]
        );
        // The loop ended with the restart.
        assert_eq!(script.calls(ProbeKind::Liveness), [30, 40, 50, 60, 70, 80]);
    }

    #[tokio::test(start_paused = true)]
    async fn the_startup_probe_gates_liveness_and_readiness() {
        let probes = TaskProbes {
            startup: Some(Probe {
                failure_threshold: Some(30),
                ..every(2, 1)
            }),
            liveness: Some(every(10, 0)),
            readiness: Some(every(5, 3)),
        };
        // Startup fails at 1, 3, 5, passes at 7.
        let script = Script::new(&[
            (
                ProbeKind::Startup,
                vec![fail("s"), fail("s"), fail("s"), Ok_],
            ),
            (ProbeKind::Liveness, vec![Ok_]),
            (ProbeKind::Readiness, vec![Ok_]),
        ]);
        let events = events_of(probes, &script, Duration::from_secs(30)).await;
        assert_eq!(events, [(7, ready(true, ""))]);
        assert_eq!(
            script.calls(ProbeKind::Startup),
            [1, 3, 5, 7],
            "not run once passed"
        );
        assert_eq!(script.calls(ProbeKind::Liveness), [7, 17, 27]);
        assert_eq!(script.calls(ProbeKind::Readiness), [7, 12, 17, 22, 27]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_startup_probe_that_keeps_failing_asks_for_a_restart() {
        let probes = TaskProbes {
            startup: Some(every(1, 0)),
            liveness: Some(every(1, 0)),
            readiness: None,
        };
        let script = Script::new(&[
            (ProbeKind::Startup, vec![fail("connection refused")]),
            (ProbeKind::Liveness, vec![Ok_]),
        ]);
        let events = events_of(probes, &script, Duration::from_secs(3600)).await;
        assert_eq!(
            events,
            [(
                2,
                ProbeEvent::Restart {
                    probe: ProbeKind::Startup,
                    message: "startup probe failed 3 times in a row: connection refused".into(),
                    grace_period_seconds: None,
                }
            )]
        );
        assert!(script.calls(ProbeKind::Liveness).is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_check_skips_the_periods_it_missed_and_probes_run_concurrently() {
        let probes = TaskProbes {
            liveness: Some(every(2, 0)),
            readiness: Some(every(2, 0)),
            ..TaskProbes::default()
        };
        let mut script = Script::new(&[
            (ProbeKind::Liveness, vec![Ok_]),
            (ProbeKind::Readiness, vec![Ok_]),
        ]);
        script.takes = Duration::from_secs(5);
        let events = events_of(probes, &script, Duration::from_secs(20)).await;
        // Both ran at 0 and finished at 5 together; next on the grid: 6, then 12, 18.
        assert_eq!(events, [(5, ready(true, ""))]);
        assert_eq!(script.calls(ProbeKind::Liveness), [0, 6, 12, 18]);
        assert_eq!(script.calls(ProbeKind::Readiness), [0, 6, 12, 18]);
    }

    #[tokio::test(start_paused = true)]
    async fn delays_count_from_when_the_run_started() {
        let probes = TaskProbes {
            readiness: Some(every(10, 30)),
            ..TaskProbes::default()
        };
        let script = Script::new(&[(ProbeKind::Readiness, vec![Ok_])]);
        // Found running 25 s after it started: the first probe is 5 s away.
        let started = Instant::now();
        tokio::time::advance(Duration::from_secs(25)).await;
        let (tx, mut rx) = mpsc::channel(4);
        let run = tokio::spawn(async move { run_with(probes, &script, started, tx).await });
        assert_eq!(rx.recv().await, Some(ready(true, "")));
        assert_eq!(started.elapsed(), Duration::from_secs(30));
        run.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn the_loop_ends_when_nobody_listens() {
        // A probe that never decides anything: only the closed channel ends the loop.
        let probes = TaskProbes {
            readiness: Some(Probe {
                failure_threshold: Some(10_000),
                ..every(1, 0)
            }),
            ..TaskProbes::default()
        };
        let script = Script::new(&[(ProbeKind::Readiness, vec![fail("x")])]);
        let (tx, rx) = mpsc::channel(1);
        let run = tokio::spawn(async move { run_with(probes, &script, Instant::now(), tx).await });
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(!run.is_finished());
        drop(rx);
        tokio::time::timeout(Duration::from_secs(60), run)
            .await
            .unwrap()
            .unwrap();
    }

    #[test]
    fn the_state_machine_ignores_probes_that_are_not_active() {
        let (mut state, initial) = ProbeState::new(TaskProbes {
            startup: Some(every(1, 0)),
            readiness: Some(every(1, 0)),
            ..TaskProbes::default()
        });
        assert!(initial.is_empty());
        assert!(!state.has_started() && !state.is_ready());
        // Readiness before startup passed, and a probe the task does not have.
        assert!(state.record(ProbeKind::Readiness, &Ok_).is_empty());
        assert!(state.record(ProbeKind::Liveness, &fail("x")).is_empty());
        assert!(!state.is_ready());
        assert!(state.record(ProbeKind::Startup, &Ok_).is_empty());
        assert!(state.has_started() && !state.is_active(ProbeKind::Startup));
        assert_eq!(state.record(ProbeKind::Readiness, &Ok_), [ready(true, "")]);
        assert!(
            state.record(ProbeKind::Readiness, &Ok_).is_empty(),
            "only changes"
        );
    }

    #[test]
    fn a_restart_also_clears_ready() {
        let (mut state, initial) = ProbeState::new(TaskProbes {
            liveness: Some(Probe {
                failure_threshold: Some(1),
                ..every(1, 0)
            }),
            ..TaskProbes::default()
        });
        assert_eq!(initial, [ready(true, "")]);
        let events = state.record(ProbeKind::Liveness, &fail("dead"));
        assert_eq!(
            events,
            [
                ready(false, "liveness probe failed: dead"),
                ProbeEvent::Restart {
                    probe: ProbeKind::Liveness,
                    message: "liveness probe failed 1 time in a row: dead".into(),
                    grace_period_seconds: None,
                }
            ]
        );
        assert!(!state.is_active(ProbeKind::Liveness));
        assert!(state.record(ProbeKind::Liveness, &fail("dead")).is_empty());
    }
}
