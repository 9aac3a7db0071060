//! The API's limits against a real server on loopback: list size, paged
//! deletecollection, JSON Patch bounds, watch caps and timeouts, header and body
//! read timeouts, the connection limit, bounded metrics labels, a flood of
//! all of them at once while another client keeps being served, and the caps
//! per authenticated user (watches, mutating requests in flight).
#![allow(clippy::unwrap_used)]

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use apiserver::Config;
use futures::StreamExt;
use loom_testing::TestServer;
use loom_testing::http::JsonClient;
use loom_testing::tls::TEST_USERS_GROUP;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const JOBS: &str = "/apis/loom.dev/v1/namespaces/default/jobs";
const LOOPBACK: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

fn job(name: &str, labels: Value) -> Value {
    json!({
        "apiVersion": "loom.dev/v1", "kind": "Job",
        "metadata": {"name": name, "labels": labels},
        "spec": {"replicas": 1, "template": {"spec": {"image": "busybox", "command": ["true"]}}}
    })
}

/// What these tests do to the API beyond single requests.
trait LimitsClient {
    /// A JSON Patch.
    async fn json_patch(&self, path: &str, ops: &Value) -> (u16, Value);
    /// Creates `count` jobs named `{prefix}-{i}`, 32 at a time.
    async fn create_jobs(&self, prefix: &str, count: usize, labels: Value);
    /// Every page of a list with `limit`, following `continue`.
    async fn list_paged(&self, query: &str) -> (Vec<Value>, usize);
}

impl LimitsClient for JsonClient {
    async fn json_patch(&self, path: &str, ops: &Value) -> (u16, Value) {
        self.patch(path, "application/json-patch+json", &ops.to_string())
            .await
    }

    /// Creates `count` jobs named `{prefix}-{i}`, 32 at a time.
    async fn create_jobs(&self, prefix: &str, count: usize, labels: Value) {
        futures::stream::iter(0..count)
            .map(|i| {
                let body = job(&format!("{prefix}-{i:05}"), labels.clone());
                async move {
                    let (code, created) = self.post(JOBS, &body).await;
                    assert_eq!(code, 201, "{created}");
                }
            })
            .buffer_unordered(32)
            .collect::<Vec<()>>()
            .await;
    }

    /// Every page of a list with `limit`, following `continue`.
    async fn list_paged(&self, query: &str) -> (Vec<Value>, usize) {
        let mut items = Vec::new();
        let mut pages = 0;
        let mut token = String::new();
        loop {
            let continued = if token.is_empty() {
                String::new()
            } else {
                format!("&continue={token}")
            };
            let (code, page) = self.get(&format!("{JOBS}?{query}{continued}")).await;
            assert_eq!(code, 200, "{page}");
            pages += 1;
            items.extend(page["items"].as_array().unwrap().iter().cloned());
            match page["metadata"]["continue"].as_str() {
                Some(next) if !next.is_empty() => token = next.to_owned(),
                _ => return (items, pages),
            }
        }
    }
}

fn address(server: &TestServer) -> SocketAddr {
    server.address().parse().unwrap()
}

/// Raises this process's open-file limit to what the flood needs (it holds
/// thousands of sockets, at both ends), as far as the hard limit allows.
fn raise_nofile(needed: u64) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        if limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max;
            assert_eq!(
                libc::setrlimit(libc::RLIMIT_NOFILE, &limit),
                0,
                "cannot raise RLIMIT_NOFILE to {}: {}",
                limit.rlim_max,
                std::io::Error::last_os_error()
            );
        }
    }
    assert!(
        limit.rlim_cur >= needed,
        "the flood needs {needed} open files; the hard limit is {}",
        limit.rlim_max
    );
}

/// This process's resident memory (the server runs in it), in bytes.
fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

/// A connection to `server` from `local`.
async fn connect_from(server: SocketAddr, local: IpAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(local, 0))?;
    socket.connect(server).await
}

/// Sends one raw HTTP/1.1 request on `stream` and reads the response head: the
/// status code and the head's text. With `whole`, also reads the body (by its
/// Content-Length), leaving the connection ready for the next request.
async fn exchange(
    stream: &mut TcpStream,
    request: &str,
    whole: bool,
) -> std::io::Result<(u16, String)> {
    stream.write_all(request.as_bytes()).await?;
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    let end = loop {
        if let Some(at) = received.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        received.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&received[..end]).into_owned();
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    if whole {
        let length: usize = head
            .lines()
            .find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse().ok())?
            })
            .unwrap_or(0);
        let mut left = length.saturating_sub(received.len() - end);
        while left > 0 {
            let n = stream.read(&mut buf[..left.min(4096)]).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            left -= n;
        }
    }
    Ok((code, head))
}

/// One raw request on a new connection from `local`: the code, the head and
/// the still-open stream.
async fn raw_request(
    server: SocketAddr,
    local: IpAddr,
    request: &str,
) -> std::io::Result<(u16, String, TcpStream)> {
    let mut stream = connect_from(server, local).await?;
    let (code, head) = exchange(&mut stream, request, false).await?;
    Ok((code, head, stream))
}

fn watch_request(server: SocketAddr, token: &str) -> String {
    format!(
        "GET {JOBS}?watch=true HTTP/1.1\r\nHost: {server}\r\nAuthorization: Bearer {token}\r\n\r\n"
    )
}

/// Whether the server has closed `stream` (read gives EOF or a reset) by `deadline`.
async fn closed_by(stream: &mut TcpStream, deadline: Instant) -> bool {
    let mut buf = [0u8; 256];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

/// The sum of a metric's samples whose labels contain `labels`.
async fn metric(client: &JsonClient, name: &str, labels: &str) -> f64 {
    let text = client
        .http
        .get(format!("{}/metrics", client.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains(labels))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_list_over_the_maximum_is_refused_and_pages_with_limit_work() {
    let server = TestServer::embedded(Config {
        max_list_objects: 20,
        ..Config::default()
    })
    .await
    .unwrap();
    let c = JsonClient::from_address(&server, LOOPBACK);
    c.create_jobs("j", 25, json!({"app": "demo"})).await;
    c.create_jobs("k", 3, json!({"app": "other"})).await;

    for query in ["", "?resourceVersion=0", "?labelSelector=app%3Ddemo"] {
        let (code, status) = c.get(&format!("{JOBS}{query}")).await;
        assert_eq!(code, 413, "{query}: {status}");
        assert_eq!(status["kind"], "Status");
        assert_eq!(status["reason"], "RequestEntityTooLarge", "{status}");
        let message = status["message"].as_str().unwrap();
        assert!(
            message.contains("more than 20 objects") && message.contains("limit and continue"),
            "{query}: {message}"
        );
    }
    // Few enough once a selector narrows it.
    let (code, list) = c.get(&format!("{JOBS}?labelSelector=app%3Dother")).await;
    assert_eq!(code, 200, "{list}");
    assert_eq!(list["items"].as_array().unwrap().len(), 3);

    // Paging works, from the store and when the cache was asked for.
    for query in ["limit=10", "limit=10&resourceVersion=0"] {
        let (items, pages) = c.list_paged(query).await;
        assert_eq!(items.len(), 28, "{query}");
        assert_eq!(pages, 3, "{query}");
    }
    // A limit above the maximum is lowered to it: the client pages on.
    let (items, pages) = c.list_paged("limit=1000").await;
    assert_eq!((items.len(), pages), (28, 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deletecollection_deletes_every_selected_object_in_pages() {
    // A maximum far below the collection: deletecollection does not list it whole.
    let server = TestServer::embedded(Config {
        max_list_objects: 100,
        ..Config::default()
    })
    .await
    .unwrap();
    let c = JsonClient::from_address(&server, LOOPBACK);
    c.create_jobs("a", 1_100, json!({"batch": "a"})).await;
    c.create_jobs("b", 600, json!({"batch": "b"})).await;

    let (code, deleted) = c
        .send(
            reqwest::Method::DELETE,
            &format!("{JOBS}?labelSelector=batch%3Da"),
            "",
            None,
        )
        .await;
    assert_eq!(code, 200, "{deleted}");
    assert_eq!(deleted["kind"], "JobList");
    let names: std::collections::BTreeSet<String> = deleted["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["metadata"]["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names.len(), 1_100);
    assert!(names.iter().all(|n| n.starts_with("a-")));
    let (left, _) = c.list_paged("limit=500").await;
    assert_eq!(left.len(), 600);

    // From the watch cache, as `resourceVersion=0` asks.
    let (code, deleted) = c
        .send(
            reqwest::Method::DELETE,
            &format!("{JOBS}?resourceVersion=0"),
            "",
            None,
        )
        .await;
    assert_eq!(code, 200, "{deleted}");
    assert_eq!(deleted["items"].as_array().unwrap().len(), 600);
    let (left, _) = c.list_paged("limit=500").await;
    assert!(left.is_empty(), "{} left", left.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn json_patches_are_bounded_in_operations_and_in_what_they_build() {
    let server = TestServer::embedded(Config::default()).await.unwrap();
    let c = JsonClient::from_address(&server, LOOPBACK);
    let (code, created) = c.post(JOBS, &job("p", json!({}))).await;
    assert_eq!(code, 201, "{created}");
    let path = format!("{JOBS}/p");
    let test = json!({"op": "test", "path": "/metadata/name", "value": "p"});

    let (code, status) = c
        .json_patch(&path, &json!(vec![test.clone(); 10_001]))
        .await;
    assert_eq!(code, 413, "{status}");
    assert!(
        status["message"]
            .as_str()
            .unwrap()
            .contains("10001 operations, more than the 10000 allowed"),
        "{status}"
    );
    let (code, patched) = c.json_patch(&path, &json!(vec![test; 10_000])).await;
    assert_eq!(code, 200, "10,000 operations are allowed: {patched}");

    // Each copy doubles the object; refused after a handful, quickly.
    let doubling: Vec<Value> = (0..60)
        .map(|i| json!({"op": "copy", "from": "/spec", "path": format!("/spec/c{i}")}))
        .collect();
    let started = Instant::now();
    let (code, status) = c.json_patch(&path, &json!(doubling)).await;
    assert_eq!(code, 413, "{status}");
    assert!(
        status["message"]
            .as_str()
            .unwrap()
            .contains("would make the object larger than 3145728 bytes"),
        "{status}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    let (_, now) = c.get(&path).await;
    assert_eq!(
        now["metadata"]["resourceVersion"],
        patched["metadata"]["resourceVersion"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_name_only_known_subresources() {
    let server = TestServer::embedded(Config::default()).await.unwrap();
    let c = JsonClient::from_address(&server, LOOPBACK);
    let (code, _) = c
        .get("/apis/loom.dev/v1/namespaces/default/tasks/x/garbage-sub")
        .await;
    assert_eq!(code, 404);
    let (code, _) = c
        .get("/apis/loom.dev/v1/namespaces/default/tasks/x/status")
        .await;
    assert_eq!(code, 404);
    let text = c
        .http
        .get(format!("{}/metrics", c.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!text.contains("garbage-sub"), "{text}");
    assert!(text.contains("resource=\"tasks/unknown\""), "{text}");
    assert!(text.contains("resource=\"tasks/status\""), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_watch_without_timeout_ends_cleanly_after_the_default_one() {
    let server = TestServer::embedded(Config {
        min_watch_timeout: Duration::from_millis(500),
        ..Config::default()
    })
    .await
    .unwrap();
    let c = JsonClient::from_address(&server, LOOPBACK);
    c.create_jobs("w", 2, json!({})).await;
    let started = Instant::now();
    let response = c
        .http
        .get(format!("{}{JOBS}?watch=true", c.base))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    // The whole body arrives: the chunked stream is ended properly, not cut.
    let body = tokio::time::timeout(Duration::from_secs(10), response.bytes())
        .await
        .expect("the watch must end by itself")
        .unwrap();
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(500) && elapsed < Duration::from_secs(5),
        "{elapsed:?}"
    );
    let events: Vec<Value> = body
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).unwrap())
        .collect();
    assert_eq!(events.len(), 2);
    // A client's own timeoutSeconds still wins.
    let started = Instant::now();
    let response = c
        .http
        .get(format!("{}{JOBS}?watch=true&timeoutSeconds=1", c.base))
        .send()
        .await
        .unwrap();
    response.bytes().await.unwrap();
    assert!(started.elapsed() >= Duration::from_secs(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_body_sent_too_slowly_gets_408() {
    let server = TestServer::plain(Config {
        body_read_timeout: Duration::from_secs(1),
        ..Config::default()
    })
    .await
    .unwrap();
    let body = job("slow", json!({})).to_string();
    let request = format!(
        "POST {JOBS} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{}",
        server.pki.admin_token(),
        body.len(),
        &body[..10]
    );
    let started = Instant::now();
    let (code, head, _stream) = tokio::time::timeout(
        Duration::from_secs(10),
        raw_request(address(&server), "127.0.0.1".parse().unwrap(), &request),
    )
    .await
    .expect("the server must answer a stalled body")
    .unwrap();
    assert_eq!(code, 408, "{head}");
    assert!(started.elapsed() >= Duration::from_secs(1));
    let (code, _) = JsonClient::from_address(&server, LOOPBACK)
        .get(&format!("{JOBS}/slow"))
        .await;
    assert_eq!(code, 404, "nothing was created");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn connections_over_the_limit_wait_until_one_closes() {
    let server = TestServer::plain(Config {
        max_connections: 20,
        ..Config::default()
    })
    .await
    .unwrap();
    let addr = address(&server);
    // The test server's readiness probe may still hold a slot for a moment.
    let mut idle = Vec::new();
    for _ in 0..20 {
        idle.push(TcpStream::connect(addr).await.unwrap());
    }
    let c = JsonClient::from_address(&server, LOOPBACK);
    let waiting = tokio::time::timeout(Duration::from_millis(800), c.get("/healthz")).await;
    assert!(
        waiting.is_err(),
        "a connection over the limit must not be served"
    );
    idle.truncate(10);
    let (code, _) = tokio::time::timeout(Duration::from_secs(10), c.get("/healthz"))
        .await
        .expect("served once connections closed");
    assert_eq!(code, 200);
}

/// The flood: 1,000 connections that never send headers, 10,000 watches from
/// one address, a doubling JSON Patch; meanwhile another client's reads and
/// creates stay fast and the process's memory stays bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flood_leaves_other_clients_served() {
    const IDLE: usize = 1_000;
    const WATCHES: usize = 10_000;
    const PER_SOURCE: usize = 200;
    // Long enough to hold the idle connections through the whole flood on a
    // loaded machine, short enough to see them dropped.
    const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
    // Both ends of every connection are in this process.
    raise_nofile(8_192);
    let server = TestServer::plain(Config {
        max_watches_per_user: PER_SOURCE,
        header_read_timeout: HEADER_TIMEOUT,
        ..Config::default()
    })
    .await
    .unwrap();
    let addr = address(&server);
    let flooder: IpAddr = "127.0.0.1".parse().unwrap();
    let other: IpAddr = "127.0.0.2".parse().unwrap();
    // The flooder and the other watcher are two users who may read jobs;
    // the bystander is the administrator.
    server
        .bind_cluster_role("Group", TEST_USERS_GROUP, "view")
        .await;
    let flooder_token = server.pki.token("alice");
    let other_token = server.pki.token("bob");
    let bystander = JsonClient::from_address(&server, other);
    bystander.create_jobs("seed", 20, json!({})).await;
    let (code, _) = bystander.post(JOBS, &job("target", json!({}))).await;
    assert_eq!(code, 201);
    let rss_before = rss();

    // Memory is sampled throughout.
    let peak = Arc::new(AtomicU64::new(rss_before));
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (peak, sampling) = (peak.clone(), sampling.clone());
        tokio::spawn(async move {
            while sampling.load(Ordering::Relaxed) {
                peak.fetch_max(rss(), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };

    // The bystander reads and creates throughout the flood.
    let flooding = Arc::new(AtomicBool::new(true));
    let bystanding = {
        let flooding = flooding.clone();
        let bystander = JsonClient::from_address(&server, other);
        tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut i = 0;
            while flooding.load(Ordering::Relaxed) || latencies.len() < 200 {
                let started = Instant::now();
                let code = if i % 2 == 0 {
                    bystander.get(&format!("{JOBS}/target")).await.0
                } else {
                    bystander
                        .post(JOBS, &job(&format!("during-{i}"), json!({})))
                        .await
                        .0
                };
                latencies.push(started.elapsed());
                assert!(code == 200 || code == 201, "request {i}: {code}");
                i += 1;
            }
            latencies
        })
    };

    // 1,000 connections that never send a header.
    let opened = Instant::now();
    let mut idle = Vec::with_capacity(IDLE);
    for _ in 0..IDLE {
        idle.push(TcpStream::connect(addr).await.unwrap());
    }

    // 10,000 watches of one user: the first PER_SOURCE are served and
    // stay open, the rest get 429 with Retry-After. Each of a few hundred
    // workers sends its requests one after another over one keep-alive
    // connection (a new one after each served watch), as a client library would.
    const WORKERS: usize = 250;
    let outcomes: Vec<(Vec<u16>, Vec<String>, Vec<TcpStream>)> = futures::stream::iter(0..WORKERS)
        .map(|worker| {
            let flooder_token = flooder_token.clone();
            async move {
                let mut codes = Vec::new();
                let mut refusals = Vec::new();
                let mut kept = Vec::new();
                let mut connection: Option<TcpStream> = None;
                for _ in (worker..WATCHES).step_by(WORKERS) {
                    let mut stream = match connection.take() {
                        Some(stream) => stream,
                        None => connect_from(addr, flooder).await.unwrap(),
                    };
                    let (code, head) =
                        exchange(&mut stream, &watch_request(addr, &flooder_token), true)
                            .await
                            .unwrap();
                    codes.push(code);
                    if code == 200 {
                        kept.push(stream);
                    } else {
                        refusals.push(head);
                        connection = Some(stream);
                    }
                }
                (codes, refusals, kept)
            }
        })
        .buffer_unordered(WORKERS)
        .collect()
        .await;
    eprintln!(
        "idle connections and {WATCHES} watch requests took {:?}",
        opened.elapsed()
    );
    let codes: Vec<u16> = outcomes
        .iter()
        .flat_map(|(c, _, _)| c.iter().copied())
        .collect();
    let served = codes.iter().filter(|c| **c == 200).count();
    let refused: Vec<&String> = outcomes.iter().flat_map(|(_, r, _)| r.iter()).collect();
    assert_eq!(codes.len(), WATCHES);
    assert_eq!(served, PER_SOURCE, "watches served to one user");
    assert_eq!(refused.len(), WATCHES - PER_SOURCE, "watches refused");
    assert!(
        refused.iter().all(|head| head.starts_with("HTTP/1.1 429")
            && head.to_ascii_lowercase().contains("retry-after: 10")),
        "every refusal is a 429 that says when to retry: {}",
        refused[0]
    );
    let watches: Vec<TcpStream> = outcomes.into_iter().flat_map(|(_, _, k)| k).collect();

    // Another user may still watch.
    let (code, head, other_watch) = raw_request(addr, other, &watch_request(addr, &other_token))
        .await
        .unwrap();
    assert_eq!(code, 200, "{head}");

    // A doubling JSON Patch is refused, quickly.
    let doubling: Vec<Value> = (0..60)
        .map(|i| json!({"op": "copy", "from": "/spec", "path": format!("/spec/c{i}")}))
        .collect();
    let started = Instant::now();
    let (code, status) = bystander
        .json_patch(&format!("{JOBS}/target"), &json!(doubling))
        .await;
    assert_eq!(code, 413, "{status}");
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(
        opened.elapsed() < HEADER_TIMEOUT,
        "the flood outlasted the header timeout ({:?}): the idle connections were not held throughout",
        opened.elapsed()
    );

    flooding.store(false, Ordering::Relaxed);
    let mut latencies = bystanding.await.unwrap();
    sampling.store(false, Ordering::Relaxed);
    sampler.await.unwrap();
    latencies.sort();
    let p99 = latencies[latencies.len() * 99 / 100];
    let grown = peak.load(Ordering::Relaxed).saturating_sub(rss_before);
    eprintln!(
        "bystander: {} requests, p50 {:?}, p99 {:?}, max {:?}; RSS grew {} MiB",
        latencies.len(),
        latencies[latencies.len() / 2],
        p99,
        latencies[latencies.len() - 1],
        grown / (1024 * 1024)
    );
    assert!(p99 < Duration::from_millis(100), "bystander p99 {p99:?}");
    assert!(
        grown < 200 * 1024 * 1024,
        "RSS grew {} MiB",
        grown / (1024 * 1024)
    );

    // The connections that never sent headers are dropped past the header timeout.
    let deadline = opened + HEADER_TIMEOUT + Duration::from_secs(10);
    for (i, stream) in idle.iter_mut().enumerate() {
        assert!(
            closed_by(stream, deadline).await,
            "idle connection {i} still open {:?} after it opened",
            opened.elapsed()
        );
    }

    // Closed watches give their slots back.
    drop(watches);
    drop(other_watch);
    let client = JsonClient::from_address(&server, LOOPBACK);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let open = metric(&client, "loom_apiserver_watchers", "jobs").await;
        if open == 0.0 {
            break;
        }
        assert!(Instant::now() < deadline, "{open} watches still counted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (code, head, _again) = raw_request(addr, flooder, &watch_request(addr, &flooder_token))
        .await
        .unwrap();
    assert_eq!(code, 200, "{head}");
}

/// A client of `server` as `user` in `group` (a client certificate).
fn as_user(server: &TestServer, user: &str, group: Option<&str>) -> JsonClient {
    JsonClient {
        http: server.http_as(user, group),
        base: server.url.clone(),
    }
}

/// Opens a watch of jobs and returns its response (held open while kept).
async fn open_watch(client: &JsonClient) -> reqwest::Response {
    client
        .http
        .get(format!("{}{JOBS}?watch=true", client.base))
        .send()
        .await
        .unwrap()
}

/// Asserts a 429 Status telling when to retry, in its body and its header,
/// whose message says `why`.
async fn assert_too_many(response: reqwest::Response, retry_after: &str, why: &str) {
    assert_eq!(response.status().as_u16(), 429);
    assert_eq!(
        response.headers().get("retry-after").unwrap(),
        retry_after,
        "Retry-After"
    );
    let status: Value = response.json().await.unwrap();
    assert_eq!(status["kind"], "Status", "{status}");
    assert_eq!(status["reason"], "TooManyRequests", "{status}");
    assert_eq!(status["code"], 429, "{status}");
    assert_eq!(
        status["details"]["retryAfterSeconds"].to_string(),
        retry_after,
        "{status}"
    );
    let message = status["message"].as_str().unwrap();
    assert!(message.contains(why), "{message:?} should say {why:?}");
}

/// Watch caps are per authenticated user: one user over its cap gets 429
/// while another, from the same address, is served; system:masters is
/// exempt; a closed watch gives its slot back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_user_over_its_watch_cap_gets_429_and_another_user_is_served() {
    const CAP: usize = 3;
    let server = TestServer::embedded(Config {
        max_watches_per_user: CAP,
        authentication: apiserver::authn::Authentication::secure(),
        ..Config::default()
    })
    .await
    .unwrap();
    // Both may read and write jobs: only the caps tell them apart.
    server.bind_cluster_role("Group", "dev", "edit").await;
    let alice = as_user(&server, "alice", Some("dev"));
    let bob = as_user(&server, "bob", Some("dev"));
    let admin = JsonClient::new(&server);

    let mut alices = Vec::new();
    for _ in 0..CAP {
        let watch = open_watch(&alice).await;
        assert_eq!(watch.status().as_u16(), 200);
        alices.push(watch);
    }
    assert_too_many(open_watch(&alice).await, "10", "user \"alice\"").await;
    // The same address, another user: its own cap.
    let mut bobs = Vec::new();
    for _ in 0..CAP {
        let watch = open_watch(&bob).await;
        assert_eq!(watch.status().as_u16(), 200);
        bobs.push(watch);
    }
    // Alice's other requests are not watches.
    assert_eq!(alice.get(JOBS).await.0, 200);
    // The administrators' group has no cap of its own.
    let mut admins = Vec::new();
    for _ in 0..CAP * 2 {
        let watch = open_watch(&admin).await;
        assert_eq!(watch.status().as_u16(), 200);
        admins.push(watch);
    }
    let refused = metric(
        &admin,
        "loom_apiserver_rejected_requests_total",
        "reason=\"watches-per-user\"",
    )
    .await;
    assert_eq!(refused, 1.0);

    // A closed watch's slot comes back, once the server has seen it close.
    alices.pop();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let watch = open_watch(&alice).await;
        if watch.status().as_u16() == 200 {
            break;
        }
        assert_eq!(watch.status().as_u16(), 429);
        assert!(
            Instant::now() < deadline,
            "the closed watch's slot never came back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A store whose creates of objects named `held-…` wait for the test to
/// let them through, so requests stay in flight as long as the test needs.
#[derive(Debug)]
struct GatedStore {
    inner: Arc<dyn apiserver::store::Store>,
    gate: Arc<tokio::sync::Semaphore>,
    waiting: Arc<std::sync::atomic::AtomicUsize>,
}

#[async_trait::async_trait]
impl apiserver::store::Store for GatedStore {
    async fn get(&self, key: &str) -> apiserver::store::Result<Option<apiserver::store::KeyValue>> {
        self.inner.get(key).await
    }

    async fn list(
        &self,
        prefix: &str,
        options: apiserver::store::ListOptions,
    ) -> apiserver::store::Result<apiserver::store::ListResult> {
        self.inner.list(prefix, options).await
    }

    async fn create(
        &self,
        key: &str,
        value: bytes::Bytes,
    ) -> apiserver::store::Result<apiserver::store::KeyValue> {
        if key.contains("/held-") {
            self.waiting.fetch_add(1, Ordering::SeqCst);
            if let Ok(permit) = self.gate.acquire().await {
                permit.forget();
            }
        }
        self.inner.create(key, value).await
    }

    async fn update(
        &self,
        key: &str,
        value: bytes::Bytes,
        expected: apiserver::store::Revision,
    ) -> apiserver::store::Result<apiserver::store::KeyValue> {
        self.inner.update(key, value, expected).await
    }

    async fn delete(
        &self,
        key: &str,
        expected: Option<apiserver::store::Revision>,
    ) -> apiserver::store::Result<apiserver::store::Deleted> {
        self.inner.delete(key, expected).await
    }

    async fn watch(
        &self,
        prefix: &str,
        after: apiserver::store::Revision,
    ) -> apiserver::store::Result<apiserver::store::WatchStream> {
        self.inner.watch(prefix, after).await
    }

    async fn compact(&self, revision: apiserver::store::Revision) -> apiserver::store::Result<()> {
        self.inner.compact(revision).await
    }

    async fn current_revision(&self) -> apiserver::store::Result<apiserver::store::Revision> {
        self.inner.current_revision().await
    }
}

/// Mutating requests in flight are capped per user and in all (Kubernetes'
/// --max-mutating-requests-inflight): 429 with Retry-After: 1 beyond either;
/// reads and system:masters are not counted; places come back when the
/// requests end.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mutating_requests_in_flight_are_capped_per_user_and_in_all() {
    let dir = tempfile::tempdir().unwrap();
    let embedded = apiserver::store::EmbeddedStore::open(apiserver::store::EmbeddedOptions::new(
        dir.path().join("loom.db"),
    ))
    .unwrap();
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let waiting = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let store = Arc::new(GatedStore {
        inner: Arc::new(embedded),
        gate: gate.clone(),
        waiting: waiting.clone(),
    });
    let server = TestServer::over(
        store,
        Config {
            max_mutating_requests_inflight_per_user: 1,
            max_mutating_requests_inflight: 2,
            authentication: apiserver::authn::Authentication::secure(),
            ..Config::default()
        },
    )
    .await
    .unwrap();
    // All three may write jobs: only the caps tell them apart.
    server.bind_cluster_role("Group", "dev", "edit").await;
    let alice = as_user(&server, "alice", Some("dev"));
    let bob = as_user(&server, "bob", Some("dev"));
    let carol = as_user(&server, "carol", Some("dev"));
    let admin = JsonClient::new(&server);
    let held_until = |count: usize| {
        let waiting = waiting.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(10);
            while waiting.load(Ordering::SeqCst) < count {
                assert!(
                    Instant::now() < deadline,
                    "the held create never reached the store"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };

    // Alice's create is held in flight: her next one is over her cap.
    let first = {
        let alice = alice.clone();
        tokio::spawn(async move { alice.post(JOBS, &job("held-a", json!({}))).await })
    };
    held_until(1).await;
    let over = alice
        .http
        .post(format!("{}{JOBS}", alice.base))
        .json(&job("a-2", json!({})))
        .send()
        .await
        .unwrap();
    assert_too_many(over, "1", "user \"alice\" (the limit is 1 per user)").await;
    // Reads are not mutating requests.
    assert_eq!(alice.get(JOBS).await.0, 200);

    // Bob's own create is held too: the server's total is reached, so Carol,
    // who has nothing in flight, is refused.
    let second = {
        let bob = bob.clone();
        tokio::spawn(async move { bob.post(JOBS, &job("held-b", json!({}))).await })
    };
    held_until(2).await;
    let over = carol
        .http
        .post(format!("{}{JOBS}", carol.base))
        .json(&job("c-1", json!({})))
        .send()
        .await
        .unwrap();
    assert_too_many(over, "1", "on this server (the limit is 2)").await;
    // The administrators are not counted.
    assert_eq!(admin.post(JOBS, &job("admin-1", json!({}))).await.0, 201);

    // Let the held creates through: they succeed and their places come back.
    gate.add_permits(2);
    assert_eq!(first.await.unwrap().0, 201);
    assert_eq!(second.await.unwrap().0, 201);
    assert_eq!(carol.post(JOBS, &job("c-2", json!({}))).await.0, 201);
    assert_eq!(alice.post(JOBS, &job("a-3", json!({}))).await.0, 201);
    for (reason, count) in [
        ("mutating-inflight-per-user", 1.0),
        ("mutating-inflight", 1.0),
    ] {
        let refused = metric(
            &admin,
            "loom_apiserver_rejected_requests_total",
            &format!("reason=\"{reason}\""),
        )
        .await;
        assert_eq!(refused, count, "{reason}");
    }
}
