//! Leader election on a Lease: acquire, renew, release on shutdown, fail over
//! after the lease expires. A leader stops believing it leads `renew_deadline`
//! after its last successful renewal, before the lease (`lease_duration`) can
//! expire for anyone else, so two electors never both lead at once.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use api_types::{Lease, LeaseSpec, ObjectMeta};
use chrono::{DateTime, Utc};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::api::{Api, PostParams};
use crate::error::Result;

/// Where the lease is kept.
pub trait LeaseBackend: Send + Sync + 'static {
    /// The lease, if it exists.
    fn get(&self) -> impl Future<Output = Result<Option<Lease>>> + Send;
    /// Creates the lease; fails if it exists.
    fn create(&self, lease: &Lease) -> impl Future<Output = Result<Lease>> + Send;
    /// Replaces the lease if its resourceVersion is still current; fails otherwise.
    fn replace(&self, lease: &Lease) -> impl Future<Output = Result<Lease>> + Send;
}

/// A Lease object through the API.
#[derive(Clone, Debug)]
pub struct ApiLease {
    api: Api<Lease>,
    name: String,
}

impl ApiLease {
    /// The lease `name` in `api`'s namespace.
    pub fn new(api: Api<Lease>, name: &str) -> Self {
        ApiLease {
            api,
            name: name.to_owned(),
        }
    }
}

impl LeaseBackend for ApiLease {
    async fn get(&self) -> Result<Option<Lease>> {
        self.api.get_opt(&self.name).await
    }

    async fn create(&self, lease: &Lease) -> Result<Lease> {
        self.api.create(&PostParams::default(), lease).await
    }

    async fn replace(&self, lease: &Lease) -> Result<Lease> {
        self.api
            .replace(&self.name, &PostParams::default(), lease)
            .await
    }
}

/// Wall-clock time as the electors agree on it.
pub trait Clock: Send + Sync + 'static {
    /// Now.
    fn now(&self) -> DateTime<Utc>;
}

/// The wall clock, advancing with tokio's clock (so paused-time tests control it).
#[derive(Clone, Debug)]
pub struct TokioClock {
    base: DateTime<Utc>,
    start: Instant,
}

impl Default for TokioClock {
    fn default() -> Self {
        TokioClock {
            base: Utc::now(),
            start: Instant::now(),
        }
    }
}

impl Clock for TokioClock {
    fn now(&self) -> DateTime<Utc> {
        let elapsed = chrono::Duration::from_std(self.start.elapsed()).unwrap_or_default();
        self.base + elapsed
    }
}

/// Timings of an election.
#[derive(Clone, Debug)]
pub struct ElectionConfig {
    /// How long a lease holds without renewal.
    pub lease_duration: Duration,
    /// A leader that could not renew for this long steps down; shorter than the lease.
    pub renew_deadline: Duration,
    /// How often to try to acquire or renew.
    pub retry_period: Duration,
}

impl Default for ElectionConfig {
    fn default() -> Self {
        ElectionConfig {
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// Whether this elector leads, as it changes.
#[derive(Clone, Debug)]
pub struct Leadership {
    rx: watch::Receiver<bool>,
}

impl Leadership {
    /// Whether this elector leads now.
    pub fn is_leader(&self) -> bool {
        *self.rx.borrow()
    }

    /// Waits until this elector leads.
    pub async fn acquired(&mut self) {
        let _ = self.rx.wait_for(|l| *l).await;
    }

    /// Waits until this elector stops leading.
    pub async fn lost(&mut self) {
        let _ = self.rx.wait_for(|l| !*l).await;
    }
}

/// One candidate for leadership.
#[derive(Debug)]
pub struct LeaderElector<B, C = TokioClock> {
    backend: B,
    clock: C,
    identity: String,
    config: ElectionConfig,
    lease_name: String,
    namespace: String,
}

impl<B: LeaseBackend> LeaderElector<B, TokioClock> {
    /// A candidate called `identity` for the lease `namespace/name` in `backend`.
    pub fn new(
        backend: B,
        namespace: &str,
        name: &str,
        identity: &str,
        config: ElectionConfig,
    ) -> Self {
        LeaderElector::with_clock(
            backend,
            TokioClock::default(),
            namespace,
            name,
            identity,
            config,
        )
    }
}

impl<B: LeaseBackend, C: Clock> LeaderElector<B, C> {
    /// As `new`, with a given clock.
    pub fn with_clock(
        backend: B,
        clock: C,
        namespace: &str,
        name: &str,
        identity: &str,
        config: ElectionConfig,
    ) -> Self {
        LeaderElector {
            backend,
            clock,
            identity: identity.to_owned(),
            config,
            lease_name: name.to_owned(),
            namespace: namespace.to_owned(),
        }
    }

    /// Campaigns until `shutdown`, then releases the lease if held.
    pub fn run(self, shutdown: CancellationToken) -> (Leadership, tokio::task::JoinHandle<()>) {
        let (tx, rx) = watch::channel(false);
        let handle = tokio::spawn(async move {
            let elector = Arc::new(self);
            let mut last_renewal: Option<Instant> = None;
            loop {
                match elector.try_acquire_or_renew().await {
                    Ok(true) => {
                        last_renewal = Some(Instant::now());
                        if !*tx.borrow() {
                            info!(identity = %elector.identity, lease = %elector.lease_name, "became the leader");
                        }
                        tx.send_replace(true);
                    }
                    Ok(false) => {
                        last_renewal = None;
                        if tx.send_replace(false) {
                            info!(identity = %elector.identity, "lost the lease");
                        }
                    }
                    Err(error) => {
                        warn!(%error, identity = %elector.identity, "cannot reach the lease");
                    }
                }
                // Without a renewal in time, step down before the lease can pass to another.
                if let Some(at) = last_renewal
                    && at.elapsed() >= elector.config.renew_deadline
                {
                    last_renewal = None;
                    if tx.send_replace(false) {
                        warn!(identity = %elector.identity, "renew deadline passed; stepping down");
                    }
                }
                let wait = match last_renewal {
                    // Wake in time to step down if renewals keep failing.
                    Some(at) => elector.config.retry_period.min(
                        (at + elector.config.renew_deadline)
                            .saturating_duration_since(Instant::now()),
                    ),
                    None => elector.config.retry_period,
                };
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(wait) => {}
                }
            }
            if tx.send_replace(false) {
                elector.release().await;
            }
        });
        (Leadership { rx }, handle)
    }

    fn spec(&self, now: DateTime<Utc>, previous: Option<&LeaseSpec>) -> LeaseSpec {
        let ours =
            previous.and_then(|p| p.holder_identity.as_deref()) == Some(self.identity.as_str());
        let transitions = previous.and_then(|p| p.lease_transitions).unwrap_or(0);
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(
                i32::try_from(self.config.lease_duration.as_secs()).unwrap_or(i32::MAX),
            ),
            acquire_time: if ours {
                previous.and_then(|p| p.acquire_time)
            } else {
                Some(now)
            },
            renew_time: Some(now),
            lease_transitions: Some(if ours || previous.is_none() {
                transitions
            } else {
                transitions + 1
            }),
        }
    }

    /// Takes or renews the lease; `Ok(false)` while another holds it.
    async fn try_acquire_or_renew(&self) -> Result<bool> {
        let now = self.clock.now();
        match self.backend.get().await? {
            None => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: self.lease_name.clone(),
                        namespace: self.namespace.clone(),
                        ..Default::default()
                    },
                    spec: self.spec(now, None),
                    ..Default::default()
                };
                match self.backend.create(&lease).await {
                    Ok(_) => Ok(true),
                    Err(error) if error.is_conflict() => Ok(false),
                    Err(error) => Err(error),
                }
            }
            Some(mut lease) => {
                let holder = lease.spec.holder_identity.clone().unwrap_or_default();
                let held_by_other = !holder.is_empty()
                    && holder != self.identity
                    && lease.spec.expires_at().is_some_and(|expiry| expiry > now);
                if held_by_other {
                    return Ok(false);
                }
                lease.spec = self.spec(now, Some(&lease.spec));
                match self.backend.replace(&lease).await {
                    Ok(_) => Ok(true),
                    Err(error) if error.is_conflict() => Ok(false),
                    Err(error) => Err(error),
                }
            }
        }
    }

    /// Gives the lease up so another candidate takes over at once.
    async fn release(&self) {
        if let Ok(Some(mut lease)) = self.backend.get().await
            && lease.spec.holder_identity.as_deref() == Some(self.identity.as_str())
        {
            lease.spec.holder_identity = None;
            lease.spec.renew_time = Some(self.clock.now());
            match self.backend.replace(&lease).await {
                Ok(_) => info!(identity = %self.identity, "released the lease"),
                Err(error) => warn!(%error, "cannot release the lease"),
            }
        }
    }
}

/// Runs `work` whenever this elector leads: it starts on acquiring the lease and
/// its token is cancelled on losing it (or on `shutdown`); it starts again on
/// the next acquisition. Returns after `shutdown` once `work` has finished.
pub async fn while_leading<F, Fut>(
    mut leadership: Leadership,
    shutdown: CancellationToken,
    mut work: F,
) where
    F: FnMut(CancellationToken) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = leadership.acquired() => {}
        }
        let lead = shutdown.child_token();
        let running = tokio::spawn(work(lead.clone()));
        tokio::select! {
            _ = shutdown.cancelled() => {}
            _ = leadership.lost() => {}
        }
        lead.cancel();
        if let Err(error) = running.await {
            warn!(%error, "the leader's work panicked");
        }
        if shutdown.is_cancelled() {
            return;
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::error::Error;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// A lease in memory, with resourceVersions, reachable or not per candidate.
    #[derive(Default)]
    struct Memory {
        lease: Mutex<Option<Lease>>,
        version: Mutex<u64>,
    }

    struct Link {
        memory: Arc<Memory>,
        down: Arc<AtomicBool>,
    }

    fn refused() -> Error {
        let mut status = api_types::Status::internal_error("unreachable");
        status.code = 503;
        Error::Api(Box::new(status))
    }

    fn conflict() -> Error {
        Error::Api(Box::new(api_types::Status::conflict_modified(
            &api_types::GroupResource::new("loom.dev", "leases"),
            "l",
        )))
    }

    impl LeaseBackend for Link {
        async fn get(&self) -> Result<Option<Lease>> {
            if self.down.load(Ordering::SeqCst) {
                return Err(refused());
            }
            Ok(self.memory.lease.lock().unwrap().clone())
        }

        async fn create(&self, lease: &Lease) -> Result<Lease> {
            if self.down.load(Ordering::SeqCst) {
                return Err(refused());
            }
            let mut stored = self.memory.lease.lock().unwrap();
            if stored.is_some() {
                return Err(conflict());
            }
            let mut version = self.memory.version.lock().unwrap();
            *version += 1;
            let mut lease = lease.clone();
            lease.metadata.resource_version = version.to_string();
            *stored = Some(lease.clone());
            Ok(lease)
        }

        async fn replace(&self, lease: &Lease) -> Result<Lease> {
            if self.down.load(Ordering::SeqCst) {
                return Err(refused());
            }
            let mut stored = self.memory.lease.lock().unwrap();
            let current = stored.as_ref().map(|l| l.metadata.resource_version.clone());
            if current.as_deref() != Some(lease.metadata.resource_version.as_str()) {
                return Err(conflict());
            }
            let mut version = self.memory.version.lock().unwrap();
            *version += 1;
            let mut lease = lease.clone();
            lease.metadata.resource_version = version.to_string();
            *stored = Some(lease.clone());
            Ok(lease)
        }
    }

    fn candidate(
        memory: &Arc<Memory>,
        clock: &TokioClock,
        name: &str,
    ) -> (Arc<AtomicBool>, LeaderElector<Link>) {
        let down = Arc::new(AtomicBool::new(false));
        let link = Link {
            memory: memory.clone(),
            down: down.clone(),
        };
        let elector = LeaderElector::with_clock(
            link,
            clock.clone(),
            api_types::well_known::SYSTEM_NAMESPACE,
            "l",
            name,
            ElectionConfig::default(),
        );
        (down, elector)
    }

    /// Steps paused time in small slices, checking that at most one leads.
    async fn run_for(duration: Duration, a: &Leadership, b: &Leadership) -> (bool, bool) {
        let step = Duration::from_millis(50);
        let mut elapsed = Duration::ZERO;
        while elapsed < duration {
            tokio::time::sleep(step).await;
            elapsed += step;
            assert!(!(a.is_leader() && b.is_leader()), "two leaders at once");
        }
        (a.is_leader(), b.is_leader())
    }

    #[tokio::test(start_paused = true)]
    async fn one_leader_fail_over_after_a_partition_and_release_on_shutdown() {
        let memory = Arc::new(Memory::default());
        let clock = TokioClock::default();
        let (a_down, a) = candidate(&memory, &clock, "a");
        let (_b_down, b) = candidate(&memory, &clock, "b");
        let a_stop = CancellationToken::new();
        let b_stop = CancellationToken::new();
        let (a_lead, a_task) = a.run(a_stop.clone());
        tokio::time::sleep(Duration::from_millis(10)).await;
        let (b_lead, b_task) = b.run(b_stop.clone());
        assert_eq!(
            run_for(Duration::from_secs(20), &a_lead, &b_lead).await,
            (true, false)
        );

        // a cannot reach the lease: it steps down at its renew deadline, and b
        // takes over only once the lease expired.
        a_down.store(true, Ordering::SeqCst);
        let (a_now, _) = run_for(Duration::from_secs(11), &a_lead, &b_lead).await;
        assert!(!a_now, "a stepped down within its renew deadline");
        assert_eq!(
            run_for(Duration::from_secs(10), &a_lead, &b_lead).await,
            (false, true)
        );
        a_down.store(false, Ordering::SeqCst);
        assert_eq!(
            run_for(Duration::from_secs(20), &a_lead, &b_lead).await,
            (false, true)
        );

        // b shuts down and releases: a takes over without waiting for expiry.
        b_stop.cancel();
        b_task.await.unwrap();
        assert_eq!(
            run_for(Duration::from_secs(3), &a_lead, &b_lead).await,
            (true, false)
        );
        let lease = memory.lease.lock().unwrap().clone().unwrap();
        assert_eq!(lease.spec.holder_identity.as_deref(), Some("a"));
        assert_eq!(lease.spec.lease_transitions, Some(2));
        a_stop.cancel();
        a_task.await.unwrap();
        assert_eq!(
            memory
                .lease
                .lock()
                .unwrap()
                .clone()
                .unwrap()
                .spec
                .holder_identity,
            None
        );
    }

    #[tokio::test(start_paused = true)]
    async fn while_leading_runs_the_work_only_while_leading() {
        use std::sync::atomic::AtomicUsize;
        let memory = Arc::new(Memory::default());
        let clock = TokioClock::default();
        let running = Arc::new([AtomicUsize::new(0), AtomicUsize::new(0)]);
        let mut tasks = Vec::new();
        let mut stops = Vec::new();
        let mut downs = Vec::new();
        for (i, name) in ["a", "b"].into_iter().enumerate() {
            let (down, elector) = candidate(&memory, &clock, name);
            let stop = CancellationToken::new();
            let (leadership, elector_task) = elector.run(stop.clone());
            let running = running.clone();
            let work = tokio::spawn(while_leading(leadership, stop.clone(), move |lead| {
                let running = running.clone();
                async move {
                    running[i].fetch_add(1, Ordering::SeqCst);
                    lead.cancelled().await;
                    running[i].fetch_sub(1, Ordering::SeqCst);
                }
            }));
            tasks.push((work, elector_task));
            stops.push(stop);
            downs.push(down);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let both =
            |r: &[AtomicUsize; 2]| (r[0].load(Ordering::SeqCst), r[1].load(Ordering::SeqCst));
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let (a, b) = both(&running);
            assert!(a + b <= 1, "both replicas working");
        }
        assert_eq!(both(&running), (1, 0), "a leads and works");
        downs[0].store(true, Ordering::SeqCst);
        for _ in 0..300 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let (a, b) = both(&running);
            assert!(a + b <= 1, "both replicas working");
        }
        assert_eq!(both(&running), (0, 1), "b took over");
        for stop in stops {
            stop.cancel();
        }
        for (work, elector) in tasks {
            work.await.unwrap();
            elector.await.unwrap();
        }
        assert_eq!(both(&running), (0, 0));
    }
}
