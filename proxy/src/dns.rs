//! The node's resolver for tasks: `NAME.NAMESPACE.svc` (and the same under
//! `svc.cluster.local`) is a Service's virtual address (a headless one's
//! ready endpoints), `INDEX.JOB.NAMESPACE.svc` a Job task's address; any
//! other name is forwarded to the node's own resolvers. Answered over UDP
//! and TCP on the task bridge's gateway address; tasks find it in their
//! `/etc/resolv.conf`, with the search domains that make `NAME` work within a
//! namespace.

use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// The cluster's domains: names under them are answered here.
pub const DOMAINS: [&str; 2] = ["svc", "svc.cluster.local"];

/// How long answers may be cached: short, endpoints move.
pub const TTL: u32 = 5;

/// How long an upstream resolver may take.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);

/// The most bytes of a DNS message over TCP.
const MAX_TCP_MESSAGE: usize = 65_535;

/// The cluster's names: `name.namespace` (and `index.job.namespace`) with
/// their addresses, relative to [`DOMAINS`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Zone {
    names: HashMap<String, Vec<Ipv4Addr>>,
}

impl Zone {
    /// An empty zone.
    pub fn new() -> Zone {
        Zone::default()
    }

    /// Adds `addresses` to `relative` (e.g. `web.default`), lower-cased.
    pub fn insert(&mut self, relative: &str, addresses: impl IntoIterator<Item = Ipv4Addr>) {
        let entry = self.names.entry(relative.to_ascii_lowercase()).or_default();
        entry.extend(addresses);
        entry.sort();
        entry.dedup();
    }

    /// How many names it holds.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// The answer to a question about `name`: `None` when the name is not
    /// the cluster's (forward it); else the addresses, empty when the name
    /// has none (NXDOMAIN).
    pub fn lookup(&self, name: &str) -> Option<Vec<Ipv4Addr>> {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        // The longest domain first: `svc.cluster.local` before `svc`.
        let mut domains = DOMAINS;
        domains.sort_by_key(|d| std::cmp::Reverse(d.len()));
        for domain in domains {
            if name == domain {
                return Some(Vec::new());
            }
            if let Some(relative) = name.strip_suffix(&format!(".{domain}")) {
                return Some(self.names.get(relative).cloned().unwrap_or_default());
            }
        }
        None
    }
}

/// Answers `query` (a DNS message) from `zone`; `None` when it is to be
/// forwarded. A malformed query gets FORMERR when its id can be read.
pub fn answer(query: &[u8], zone: &Zone) -> Option<Vec<u8>> {
    let request = match Message::from_vec(query) {
        Ok(request) => request,
        Err(_) => {
            // The id is the first two bytes: answer FORMERR if there are two.
            let id = u16::from_be_bytes([*query.first()?, *query.get(1)?]);
            return Message::error_msg(id, OpCode::Query, ResponseCode::FormErr)
                .to_vec()
                .ok();
        }
    };
    if request.metadata.message_type != MessageType::Query
        || request.metadata.op_code != OpCode::Query
        || request.queries.len() != 1
    {
        return Message::error_msg(
            request.metadata.id,
            request.metadata.op_code,
            ResponseCode::NotImp,
        )
        .to_vec()
        .ok();
    }
    let question = &request.queries[0];
    let name = question.name().to_ascii();
    let addresses = zone.lookup(&name)?;
    let mut response = Message::response(request.metadata.id, OpCode::Query);
    response.metadata.authoritative = true;
    response.metadata.recursion_desired = request.metadata.recursion_desired;
    response.metadata.recursion_available = true;
    response.add_query(question.clone());
    if addresses.is_empty() {
        response.metadata.response_code = ResponseCode::NXDomain;
    } else if matches!(question.query_type(), RecordType::A | RecordType::ANY) {
        let owner: Name = question.name().clone();
        for ip in addresses {
            response.add_answer(Record::from_rdata(owner.clone(), TTL, RData::A(A(ip))));
        }
    }
    // Any other type of a name that exists: no data (NOERROR, no answer).
    response.to_vec().ok()
}

/// The node's resolver.
#[derive(Debug)]
pub struct Resolver {
    zone: watch::Receiver<Arc<Zone>>,
    upstream: Vec<SocketAddr>,
}

impl Resolver {
    /// A resolver answering from `zone`, forwarding to `upstream`.
    pub fn new(zone: watch::Receiver<Arc<Zone>>, upstream: Vec<SocketAddr>) -> Resolver {
        Resolver { zone, upstream }
    }

    /// The answer to one query: from the zone, else from upstream (SERVFAIL
    /// when none answers).
    async fn resolve(&self, query: &[u8]) -> Option<Vec<u8>> {
        let zone = self.zone.borrow().clone();
        if let Some(answer) = answer(query, &zone) {
            return Some(answer);
        }
        for upstream in &self.upstream {
            match forward(query, *upstream).await {
                Ok(answer) => return Some(answer),
                Err(error) => debug!(%upstream, %error, "upstream resolver failed"),
            }
        }
        let request = Message::from_vec(query).ok()?;
        Message::error_msg(request.metadata.id, OpCode::Query, ResponseCode::ServFail)
            .to_vec()
            .ok()
    }

    /// Serves UDP queries on `socket` until `shutdown`.
    pub async fn serve_udp(self: Arc<Self>, socket: UdpSocket, shutdown: CancellationToken) {
        let socket = Arc::new(socket);
        let mut buf = vec![0u8; 4096];
        loop {
            let received = tokio::select! {
                () = shutdown.cancelled() => return,
                received = socket.recv_from(&mut buf) => received,
            };
            let (n, peer) = match received {
                Ok(received) => received,
                Err(error) => {
                    warn!(%error, "DNS receive failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
            let query = buf[..n].to_vec();
            let (this, socket) = (self.clone(), socket.clone());
            tokio::spawn(async move {
                if let Some(mut answer) = this.resolve(&query).await {
                    if answer.len() > 512 {
                        // Too big for plain UDP: truncated, the client asks over TCP.
                        if let Ok(message) = Message::from_vec(&answer)
                            && let Ok(truncated) = message.truncate().to_vec()
                        {
                            answer = truncated;
                        }
                    }
                    let _ = socket.send_to(&answer, peer).await;
                }
            });
        }
    }

    /// Serves TCP queries on `listener` until `shutdown`.
    pub async fn serve_tcp(self: Arc<Self>, listener: TcpListener, shutdown: CancellationToken) {
        loop {
            let accepted = tokio::select! {
                () = shutdown.cancelled() => return,
                accepted = listener.accept() => accepted,
            };
            let Ok((stream, _)) = accepted else {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            let this = self.clone();
            tokio::spawn(async move {
                let _ =
                    tokio::time::timeout(Duration::from_secs(10), this.tcp_session(stream)).await;
            });
        }
    }

    async fn tcp_session(&self, mut stream: TcpStream) -> io::Result<()> {
        loop {
            let length = match stream.read_u16().await {
                Ok(length) => usize::from(length),
                Err(_) => return Ok(()),
            };
            let mut query = vec![0u8; length.min(MAX_TCP_MESSAGE)];
            stream.read_exact(&mut query).await?;
            let Some(answer) = self.resolve(&query).await else {
                return Ok(());
            };
            let length = u16::try_from(answer.len()).map_err(io::Error::other)?;
            stream.write_u16(length).await?;
            stream.write_all(&answer).await?;
        }
    }
}

/// Relays `query` to `upstream` over UDP, with a timeout; the answer must
/// carry the query's id.
async fn forward(query: &[u8], upstream: SocketAddr) -> io::Result<Vec<u8>> {
    let bind: SocketAddr = if upstream.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = UdpSocket::bind(bind).await?;
    socket.connect(upstream).await?;
    socket.send(query).await?;
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(UPSTREAM_TIMEOUT, socket.recv(&mut buf))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no answer"))??;
    if n < 2 || query.len() < 2 || buf[..2] != query[..2] {
        return Err(io::Error::other("an answer to another query"));
    }
    buf.truncate(n);
    Ok(buf)
}

/// The node's resolvers from a resolv.conf text (port 53).
pub fn upstreams(resolv_conf: &str) -> Vec<SocketAddr> {
    resolv_conf
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            (words.next()? == "nameserver")
                .then(|| words.next())
                .flatten()
                .and_then(|ip| ip.parse::<std::net::IpAddr>().ok())
                .map(|ip| SocketAddr::new(ip, 53))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use hickory_proto::op::Query;

    fn zone() -> Zone {
        let mut zone = Zone::new();
        zone.insert("web.default", [Ipv4Addr::new(10, 96, 0, 10)]);
        zone.insert("0.train.ml", [Ipv4Addr::new(10, 77, 1, 5)]);
        zone.insert(
            "db.default",
            [Ipv4Addr::new(10, 77, 2, 3), Ipv4Addr::new(10, 77, 1, 4)],
        );
        zone
    }

    fn query(name: &str, kind: RecordType) -> Vec<u8> {
        let mut message = Message::query();
        message.metadata.id = 4242;
        message.add_query(Query::query(Name::from_ascii(name).unwrap(), kind));
        message.to_vec().unwrap()
    }

    fn ask(name: &str, kind: RecordType) -> Option<Message> {
        answer(&query(name, kind), &zone()).map(|bytes| Message::from_vec(&bytes).unwrap())
    }

    fn addresses(message: &Message) -> Vec<Ipv4Addr> {
        message
            .answers
            .iter()
            .filter_map(|r| match r.data {
                RData::A(A(ip)) => Some(ip),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn service_and_job_task_names_resolve_under_both_domains() {
        for name in [
            "web.default.svc.",
            "WEB.Default.svc",
            "web.default.svc.cluster.local.",
        ] {
            let message = ask(name, RecordType::A).unwrap();
            assert_eq!(message.metadata.id, 4242);
            assert_eq!(message.metadata.response_code, ResponseCode::NoError);
            assert!(message.metadata.authoritative);
            assert_eq!(
                addresses(&message),
                vec![Ipv4Addr::new(10, 96, 0, 10)],
                "{name}"
            );
        }
        let job = ask("0.train.ml.svc.", RecordType::A).unwrap();
        assert_eq!(addresses(&job), vec![Ipv4Addr::new(10, 77, 1, 5)]);
        let headless = ask("db.default.svc.", RecordType::A).unwrap();
        assert_eq!(addresses(&headless).len(), 2);
    }

    #[test]
    fn unknown_cluster_names_are_nxdomain_and_other_types_no_data() {
        let missing = ask("nope.default.svc.", RecordType::A).unwrap();
        assert_eq!(missing.metadata.response_code, ResponseCode::NXDomain);
        let aaaa = ask("web.default.svc.", RecordType::AAAA).unwrap();
        assert_eq!(aaaa.metadata.response_code, ResponseCode::NoError);
        assert!(aaaa.answers.is_empty());
    }

    #[test]
    fn other_names_are_forwarded_and_garbage_is_refused() {
        assert!(ask("example.com.", RecordType::A).is_none());
        assert!(ask("svcx.", RecordType::A).is_none());
        // Garbage with an id: FORMERR with that id.
        let reply = answer(&[0x12, 0x34, 0xff], &zone()).unwrap();
        let reply = Message::from_vec(&reply).unwrap();
        assert_eq!(reply.metadata.id, 0x1234);
        assert_eq!(reply.metadata.response_code, ResponseCode::FormErr);
        assert!(answer(&[0x12], &zone()).is_none());
    }

    #[test]
    fn upstreams_come_from_resolv_conf() {
        let text = "# x\nnameserver 192.0.2.53\nsearch a b\nnameserver ::1\nnameserver bad\n";
        assert_eq!(
            upstreams(text),
            vec![
                "192.0.2.53:53".parse::<SocketAddr>().unwrap(),
                "[::1]:53".parse().unwrap()
            ]
        );
    }

    #[tokio::test]
    async fn udp_and_tcp_answer_and_forward() {
        // An "upstream" that answers every query with 192.0.2.1.
        let upstream = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let upstream_addr = upstream.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            loop {
                let Ok((n, peer)) = upstream.recv_from(&mut buf).await else {
                    return;
                };
                let request = Message::from_vec(&buf[..n]).unwrap();
                let mut response = Message::response(request.metadata.id, OpCode::Query);
                response.add_query(request.queries[0].clone());
                response.add_answer(Record::from_rdata(
                    request.queries[0].name().clone(),
                    60,
                    RData::A(A(Ipv4Addr::new(192, 0, 2, 1))),
                ));
                let _ = upstream.send_to(&response.to_vec().unwrap(), peer).await;
            }
        });
        let (_tx, rx) = watch::channel(Arc::new(zone()));
        let resolver = Arc::new(Resolver::new(rx, vec![upstream_addr]));
        let shutdown = CancellationToken::new();
        let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let udp_addr = udp.local_addr().unwrap();
        tokio::spawn(resolver.clone().serve_udp(udp, shutdown.clone()));
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let tcp_addr = tcp.local_addr().unwrap();
        tokio::spawn(resolver.serve_tcp(tcp, shutdown.clone()));

        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        for (name, want) in [
            ("web.default.svc.", Ipv4Addr::new(10, 96, 0, 10)),
            ("example.com.", Ipv4Addr::new(192, 0, 2, 1)),
        ] {
            client
                .send_to(&query(name, RecordType::A), udp_addr)
                .await
                .unwrap();
            let mut buf = vec![0u8; 4096];
            let (n, _) = tokio::time::timeout(Duration::from_secs(5), client.recv_from(&mut buf))
                .await
                .unwrap()
                .unwrap();
            let reply = Message::from_vec(&buf[..n]).unwrap();
            assert_eq!(addresses(&reply), vec![want], "{name}");
        }
        let mut stream = TcpStream::connect(tcp_addr).await.unwrap();
        let q = query("0.train.ml.svc.", RecordType::A);
        stream.write_u16(q.len() as u16).await.unwrap();
        stream.write_all(&q).await.unwrap();
        let n = usize::from(stream.read_u16().await.unwrap());
        let mut buf = vec![0u8; n];
        stream.read_exact(&mut buf).await.unwrap();
        let reply = Message::from_vec(&buf).unwrap();
        assert_eq!(addresses(&reply), vec![Ipv4Addr::new(10, 77, 1, 5)]);
        shutdown.cancel();
    }
}
