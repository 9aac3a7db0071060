//! The task network on a node, over rtnetlink (netlink-packet-route): a
//! bridge holding the gateway address of the node's task subnet
//! (`spec.taskCIDR`), a veth pair per container task from the bridge into the
//! task's network namespace (`eth0` there, with the task's address and a
//! default route through the gateway), and a route to every other node's task
//! subnet through that node's address, so every task reaches every other.
//!
//! Synchronous: the shim, which plumbs a task's namespace, has no async
//! runtime, and each call is one request and its acknowledgement.

use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsRawFd as _, RawFd};
use std::path::Path;

use ipnet::Ipv4Net;
use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REPLACE, NLM_F_REQUEST, NetlinkMessage,
    NetlinkPayload,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::Socket;
use netlink_sys::protocols::NETLINK_ROUTE;
use serde::{Deserialize, Serialize};

/// The routing protocol number Loom's routes carry (`proto 76` in `ip
/// route`): how the nodelet finds the routes it made among the host's, and
/// removes only those.
pub const ROUTE_PROTOCOL: u8 = 76;

/// The default bridge's name.
pub const DEFAULT_BRIDGE: &str = "loom0";

/// The name of a task's interface inside its namespace.
pub const TASK_INTERFACE: &str = "eth0";

/// A port of the node forwarded to a task (`ports[].hostPort`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HostPort {
    /// The node's port.
    pub host_port: u16,
    /// The task's port it goes to.
    pub container_port: u16,
    /// `tcp` or `udp`.
    pub protocol: HostPortProtocol,
}

/// A forwarded port's protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HostPortProtocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl HostPortProtocol {
    /// nftables' name.
    pub fn as_str(self) -> &'static str {
        match self {
            HostPortProtocol::Tcp => "tcp",
            HostPortProtocol::Udp => "udp",
        }
    }
}

/// A task's place on the node's network, in its run spec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskNetwork {
    /// The task's address.
    pub ip: Ipv4Addr,
    /// The node's task subnet's prefix length.
    pub prefix_len: u8,
    /// The bridge's address: the task's default route.
    pub gateway: Ipv4Addr,
    /// The bridge the host end joins.
    pub bridge: String,
    /// The host end's name (at most 15 bytes).
    pub host_veth: String,
    /// The node's ports forwarded to the task.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub host_ports: Vec<HostPort>,
}

/// Checks a bridge name: 1 to 15 bytes of lower-case letters, digits, `-`
/// and `_`, starting with a letter (it also names the masquerade's nftables
/// table).
pub fn check_bridge_name(name: &str) -> Result<(), String> {
    let ok = (1..=15).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err("must be 1 to 15 characters of a-z, 0-9, '-' and '_', starting with a letter".into())
    }
}

/// The host end's name of the veth of container `id`: `lv` and 12 hex
/// digits of a hash of the id (interface names are at most 15 bytes).
pub fn host_veth_name(id: &str) -> String {
    // FNV-1a, 64 bits: stable across builds, unlike std's hasher.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in id.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("lv{:012x}", hash & 0xffff_ffff_ffff)
}

/// The gateway of a task subnet: its first host address, held by the bridge.
pub fn gateway_of(net: Ipv4Net) -> Option<Ipv4Addr> {
    net.hosts().next()
}

/// A netlink socket of the namespace of the thread that opened it (it stays
/// there whatever the thread does afterwards).
pub struct Netlink {
    socket: Socket,
    seq: u32,
    buf: Vec<u8>,
}

impl std::fmt::Debug for Netlink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Netlink").field("seq", &self.seq).finish()
    }
}

fn other(message: String) -> io::Error {
    io::Error::other(message)
}

impl Netlink {
    /// A socket in the calling thread's network namespace.
    pub fn open() -> io::Result<Netlink> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        socket.set_non_blocking(false)?;
        Ok(Netlink {
            socket,
            seq: 0,
            buf: vec![0; 64 * 1024],
        })
    }

    fn send(&mut self, message: RouteNetlinkMessage, flags: u16) -> io::Result<u32> {
        self.seq = self.seq.wrapping_add(1);
        let mut request = NetlinkMessage::from(message);
        request.header.flags = flags;
        request.header.sequence_number = self.seq;
        request.finalize();
        let mut bytes = vec![0; request.buffer_len()];
        request.serialize(&mut bytes);
        self.socket.send(&bytes, 0)?;
        Ok(self.seq)
    }

    /// Reads messages answering `seq` until `done` says so.
    fn receive(
        &mut self,
        seq: u32,
        mut each: impl FnMut(NetlinkPayload<RouteNetlinkMessage>) -> io::Result<bool>,
    ) -> io::Result<()> {
        loop {
            let n = self.socket.recv(&mut &mut self.buf[..], 0)?;
            let mut offset = 0;
            while offset < n {
                let message =
                    NetlinkMessage::<RouteNetlinkMessage>::deserialize(&self.buf[offset..n])
                        .map_err(|e| other(format!("bad netlink message: {e}")))?;
                let length = message.header.length as usize;
                if length == 0 {
                    break;
                }
                offset += length;
                if message.header.sequence_number != seq {
                    continue;
                }
                if each(message.payload)? {
                    return Ok(());
                }
            }
        }
    }

    /// A change, acknowledged.
    fn change(&mut self, message: RouteNetlinkMessage, flags: u16) -> io::Result<()> {
        let seq = self.send(message, NLM_F_REQUEST | NLM_F_ACK | flags)?;
        self.receive(seq, |payload| match payload {
            NetlinkPayload::Error(error) => match error.code {
                None => Ok(true),
                Some(_) => Err(error.to_io()),
            },
            _ => Ok(false),
        })
    }

    /// A dump: every answer until the end.
    fn dump(&mut self, message: RouteNetlinkMessage) -> io::Result<Vec<RouteNetlinkMessage>> {
        let seq = self.send(message, NLM_F_REQUEST | NLM_F_DUMP)?;
        let mut answers = Vec::new();
        self.receive(seq, |payload| match payload {
            NetlinkPayload::InnerMessage(message) => {
                answers.push(message);
                Ok(false)
            }
            NetlinkPayload::Done(_) => Ok(true),
            NetlinkPayload::Error(error) => match error.code {
                None => Ok(true),
                Some(_) => Err(error.to_io()),
            },
            _ => Ok(false),
        })?;
        Ok(answers)
    }

    /// The index of link `name`, if there is one.
    pub fn link_index(&mut self, name: &str) -> io::Result<Option<u32>> {
        let mut message = LinkMessage::default();
        message
            .attributes
            .push(LinkAttribute::IfName(name.to_owned()));
        let seq = self.send(RouteNetlinkMessage::GetLink(message), NLM_F_REQUEST)?;
        let mut found = None;
        self.receive(seq, |payload| match payload {
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(link)) => {
                found = Some(link.header.index);
                Ok(true)
            }
            NetlinkPayload::Error(error) => match error.code {
                None => Ok(true),
                Some(code) if code.get() == -libc::ENODEV => Ok(true),
                Some(_) => Err(error.to_io()),
            },
            _ => Ok(false),
        })?;
        Ok(found)
    }

    /// The links of the namespace: index and name. (Not `/sys/class/net`,
    /// which shows the namespace sysfs was mounted in, not the caller's.)
    pub fn links(&mut self) -> io::Result<Vec<(u32, String)>> {
        let answers = self.dump(RouteNetlinkMessage::GetLink(LinkMessage::default()))?;
        let mut links = Vec::new();
        for answer in answers {
            let RouteNetlinkMessage::NewLink(link) = answer else {
                continue;
            };
            for attribute in &link.attributes {
                if let LinkAttribute::IfName(name) = attribute {
                    links.push((link.header.index, name.clone()));
                }
            }
        }
        Ok(links)
    }

    /// The name of the link holding address `ip`, if one does.
    pub fn link_holding(&mut self, ip: Ipv4Addr) -> io::Result<Option<String>> {
        let mut message = AddressMessage::default();
        message.header.family = AddressFamily::Inet;
        let answers = self.dump(RouteNetlinkMessage::GetAddress(message))?;
        let index = answers.iter().find_map(|answer| match answer {
            RouteNetlinkMessage::NewAddress(address) => address
                .attributes
                .iter()
                .any(|a| matches!(a, AddressAttribute::Local(IpAddr::V4(local)) if *local == ip))
                .then_some(address.header.index),
            _ => None,
        });
        let Some(index) = index else {
            return Ok(None);
        };
        Ok(self
            .links()?
            .into_iter()
            .find(|(i, _)| *i == index)
            .map(|(_, name)| name))
    }

    /// Makes bridge `name` unless there is one.
    pub fn ensure_bridge(&mut self, name: &str) -> io::Result<u32> {
        if let Some(index) = self.link_index(name)? {
            return Ok(index);
        }
        let mut message = LinkMessage::default();
        message
            .attributes
            .push(LinkAttribute::IfName(name.to_owned()));
        message
            .attributes
            .push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(
                InfoKind::Bridge,
            )]));
        match self.change(
            RouteNetlinkMessage::NewLink(message),
            NLM_F_CREATE | NLM_F_EXCL,
        ) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
            Err(e) => return Err(e),
        }
        self.link_index(name)?
            .ok_or_else(|| other(format!("bridge {name} vanished once made")))
    }

    /// Makes a veth pair: `name` here, `peer` in the namespace of `netns`.
    pub fn add_veth(&mut self, name: &str, peer: &str, netns: RawFd) -> io::Result<()> {
        let mut peer_message = LinkMessage::default();
        peer_message
            .attributes
            .push(LinkAttribute::IfName(peer.to_owned()));
        peer_message.attributes.push(LinkAttribute::NetNsFd(netns));
        let mut message = LinkMessage::default();
        message
            .attributes
            .push(LinkAttribute::IfName(name.to_owned()));
        message.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Veth),
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer_message))),
        ]));
        self.change(
            RouteNetlinkMessage::NewLink(message),
            NLM_F_CREATE | NLM_F_EXCL,
        )
    }

    /// Brings link `index` up, under `controller` (a bridge) if given.
    pub fn set_up(&mut self, index: u32, controller: Option<u32>) -> io::Result<()> {
        let mut message = LinkMessage::default();
        message.header.index = index;
        message.header.flags = LinkFlags::Up;
        message.header.change_mask = LinkFlags::Up;
        if let Some(controller) = controller {
            message
                .attributes
                .push(LinkAttribute::Controller(controller));
        }
        self.change(RouteNetlinkMessage::SetLink(message), 0)
    }

    /// Removes link `index` (a veth's peer goes with it).
    pub fn delete_link(&mut self, index: u32) -> io::Result<()> {
        let mut message = LinkMessage::default();
        message.header.index = index;
        self.change(RouteNetlinkMessage::DelLink(message), 0)
    }

    /// The IPv4 addresses on link `index`.
    pub fn addresses(&mut self, index: u32) -> io::Result<Vec<Ipv4Net>> {
        let mut message = AddressMessage::default();
        message.header.family = AddressFamily::Inet;
        let answers = self.dump(RouteNetlinkMessage::GetAddress(message))?;
        let mut found = Vec::new();
        for answer in answers {
            let RouteNetlinkMessage::NewAddress(address) = answer else {
                continue;
            };
            if address.header.index != index {
                continue;
            }
            for attribute in &address.attributes {
                if let AddressAttribute::Local(IpAddr::V4(ip)) = attribute
                    && let Ok(net) = Ipv4Net::new(*ip, address.header.prefix_len)
                {
                    found.push(net);
                }
            }
        }
        Ok(found)
    }

    fn address_message(index: u32, address: Ipv4Net) -> AddressMessage {
        let mut message = AddressMessage::default();
        message.header.family = AddressFamily::Inet;
        message.header.prefix_len = address.prefix_len();
        message.header.index = index;
        let ip = IpAddr::V4(address.addr());
        message.attributes.push(AddressAttribute::Local(ip));
        message.attributes.push(AddressAttribute::Address(ip));
        if address.prefix_len() < 31 {
            message
                .attributes
                .push(AddressAttribute::Broadcast(address.broadcast()));
        }
        message
    }

    /// Puts `address` (with its prefix) on link `index`; there already is
    /// no error.
    pub fn add_address(&mut self, index: u32, address: Ipv4Net) -> io::Result<()> {
        match self.change(
            RouteNetlinkMessage::NewAddress(Self::address_message(index, address)),
            NLM_F_CREATE | NLM_F_EXCL,
        ) {
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
            result => result,
        }
    }

    /// Takes `address` off link `index`.
    pub fn delete_address(&mut self, index: u32, address: Ipv4Net) -> io::Result<()> {
        self.change(
            RouteNetlinkMessage::DelAddress(Self::address_message(index, address)),
            0,
        )
    }

    fn route_message(route: &Route) -> RouteMessage {
        let mut message = RouteMessage::default();
        message.header.address_family = AddressFamily::Inet;
        message.header.destination_prefix_length = route.destination.prefix_len();
        message.header.table = RouteHeader::RT_TABLE_MAIN;
        message.header.protocol = RouteProtocol::Other(route.protocol);
        message.header.kind = RouteType::Unicast;
        message.header.scope = if route.gateway.is_some() {
            RouteScope::Universe
        } else {
            RouteScope::Link
        };
        if route.destination.prefix_len() > 0 {
            message
                .attributes
                .push(RouteAttribute::Destination(RouteAddress::Inet(
                    route.destination.network(),
                )));
        }
        if let Some(gateway) = route.gateway {
            message
                .attributes
                .push(RouteAttribute::Gateway(RouteAddress::Inet(gateway)));
        }
        if let Some(oif) = route.oif {
            message.attributes.push(RouteAttribute::Oif(oif));
        }
        message
    }

    /// Adds or replaces `route` in the main table.
    pub fn replace_route(&mut self, route: &Route) -> io::Result<()> {
        self.change(
            RouteNetlinkMessage::NewRoute(Self::route_message(route)),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
    }

    /// Removes `route` from the main table.
    pub fn delete_route(&mut self, route: &Route) -> io::Result<()> {
        self.change(RouteNetlinkMessage::DelRoute(Self::route_message(route)), 0)
    }

    /// The route the host would take to `ip` (the kernel's lookup).
    pub fn route_to(&mut self, ip: Ipv4Addr) -> io::Result<Option<Route>> {
        let mut message = RouteMessage::default();
        message.header.address_family = AddressFamily::Inet;
        message.header.destination_prefix_length = 32;
        message
            .attributes
            .push(RouteAttribute::Destination(RouteAddress::Inet(ip)));
        let seq = self.send(RouteNetlinkMessage::GetRoute(message), NLM_F_REQUEST)?;
        let mut found = None;
        self.receive(seq, |payload| match payload {
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewRoute(route)) => {
                let mut gateway = None;
                let mut oif = None;
                for attribute in &route.attributes {
                    match attribute {
                        RouteAttribute::Gateway(RouteAddress::Inet(ip)) => gateway = Some(*ip),
                        RouteAttribute::Oif(index) => oif = Some(*index),
                        _ => {}
                    }
                }
                found = Some(Route {
                    destination: Ipv4Net::from(ip),
                    gateway,
                    oif,
                    protocol: 0,
                });
                Ok(true)
            }
            NetlinkPayload::Error(error) => match error.code {
                None => Ok(true),
                Some(code) if code.get() == -libc::ENETUNREACH => Ok(true),
                Some(_) => Err(error.to_io()),
            },
            _ => Ok(false),
        })?;
        Ok(found)
    }

    /// The IPv4 routes of the main table made with routing protocol `protocol`.
    pub fn routes(&mut self, protocol: u8) -> io::Result<Vec<Route>> {
        let mut message = RouteMessage::default();
        message.header.address_family = AddressFamily::Inet;
        let answers = self.dump(RouteNetlinkMessage::GetRoute(message))?;
        let mut routes = Vec::new();
        for answer in answers {
            let RouteNetlinkMessage::NewRoute(route) = answer else {
                continue;
            };
            if route.header.table != RouteHeader::RT_TABLE_MAIN
                || route.header.protocol != RouteProtocol::Other(protocol)
            {
                continue;
            }
            let mut destination = Ipv4Addr::UNSPECIFIED;
            let mut gateway = None;
            let mut oif = None;
            for attribute in &route.attributes {
                match attribute {
                    RouteAttribute::Destination(RouteAddress::Inet(ip)) => destination = *ip,
                    RouteAttribute::Gateway(RouteAddress::Inet(ip)) => gateway = Some(*ip),
                    RouteAttribute::Oif(index) => oif = Some(*index),
                    _ => {}
                }
            }
            let Ok(destination) = Ipv4Net::new(destination, route.header.destination_prefix_length)
            else {
                continue;
            };
            routes.push(Route {
                destination,
                gateway,
                oif,
                protocol,
            });
        }
        Ok(routes)
    }
}

/// An IPv4 route of the main table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Where it leads.
    pub destination: Ipv4Net,
    /// Through which next hop (none: on the link).
    pub gateway: Option<Ipv4Addr>,
    /// Out of which link.
    pub oif: Option<u32>,
    /// Its routing protocol number.
    pub protocol: u8,
}

/// Sets `/proc/sys/net/ipv4/conf/LINK/forwarding` to 1: packets that come in
/// on `link` may be routed on. Per link, not the host's global switch.
pub fn enable_forwarding(link: &str) -> io::Result<()> {
    if link.is_empty() || link.contains('/') || link.starts_with('.') {
        return Err(other(format!("bad link name {link:?}")));
    }
    let path = Path::new("/proc/sys/net/ipv4/conf")
        .join(link)
        .join("forwarding");
    match std::fs::read(&path) {
        Ok(value) if value.trim_ascii() == b"1" => Ok(()),
        _ => std::fs::write(&path, b"1"),
    }
}

/// Makes the node's bridge hold the gateway of `subnet` (and only it: a
/// gateway of an earlier subnet is taken off) and brings it up, with
/// forwarding on. Returns the bridge's index.
pub fn ensure_node_bridge(netlink: &mut Netlink, bridge: &str, subnet: Ipv4Net) -> io::Result<u32> {
    let gateway =
        gateway_of(subnet).ok_or_else(|| other(format!("task subnet {subnet} has no hosts")))?;
    let wanted = Ipv4Net::new(gateway, subnet.prefix_len())
        .map_err(|e| other(format!("task subnet {subnet}: {e}")))?;
    let index = netlink.ensure_bridge(bridge)?;
    for address in netlink.addresses(index)? {
        if address != wanted {
            netlink.delete_address(index, address)?;
        }
    }
    netlink.add_address(index, wanted)?;
    netlink.set_up(index, None)?;
    enable_forwarding(bridge)?;
    Ok(index)
}

/// What the routes to other nodes' task subnets should be: one per node with
/// a subnet and an address, none to this node's own subnet. `peers` pairs
/// each subnet with its next hop: the node's address when it is on a link of
/// this host, else the router this host reaches the node through (see
/// [`next_hop`]).
pub fn wanted_routes(own: Option<Ipv4Net>, peers: &[(Ipv4Net, Ipv4Addr)]) -> Vec<Route> {
    let mut routes: Vec<Route> = peers
        .iter()
        .filter(|(net, _)| Some(*net) != own)
        .map(|(net, via)| Route {
            destination: *net,
            gateway: Some(*via),
            oif: None,
            protocol: ROUTE_PROTOCOL,
        })
        .collect();
    routes.sort_by_key(|r| (r.destination.network(), r.destination.prefix_len()));
    routes.dedup_by_key(|r| r.destination);
    routes
}

/// The next hop towards node address `ip`: the node itself when it is on a
/// link of this host, else the gateway the host's routes reach it through
/// (nodes in different subnets, whose routers route the task subnets: the
/// route to a task subnet must name a next hop on a link). `None` when the
/// host has no route to it, or reaches it only through itself.
pub fn next_hop(netlink: &mut Netlink, ip: Ipv4Addr) -> io::Result<Option<Ipv4Addr>> {
    Ok(match netlink.route_to(ip)? {
        Some(route) => match route.gateway {
            Some(gateway) => Some(gateway),
            None if route.oif.is_some() => Some(ip),
            None => None,
        },
        None => None,
    })
}

/// Makes the host's Loom routes exactly `wanted`: missing or changed ones
/// replaced, stale ones removed. Returns how many changed.
pub fn sync_routes(netlink: &mut Netlink, wanted: &[Route]) -> io::Result<usize> {
    let present = netlink.routes(ROUTE_PROTOCOL)?;
    let mut changed = 0;
    for route in &present {
        if !wanted
            .iter()
            .any(|w| w.destination == route.destination && w.gateway == route.gateway)
        {
            netlink.delete_route(route)?;
            changed += 1;
        }
    }
    for route in wanted {
        if !present
            .iter()
            .any(|p| p.destination == route.destination && p.gateway == route.gateway)
        {
            netlink.replace_route(route)?;
            changed += 1;
        }
    }
    Ok(changed)
}

/// Plumbs a task's namespace, from a thread that opened `host` in the host's
/// namespace and `inside` in the task's (whose namespace file is `netns`):
/// the veth pair, its host end on the bridge and up, `eth0` inside with the
/// task's address and up, `lo` up, and the default route via the gateway.
/// A leftover host end of the same name (a crashed run's) is removed first.
pub fn plumb_task(
    host: &mut Netlink,
    inside: &mut Netlink,
    netns: &std::fs::File,
    network: &TaskNetwork,
) -> io::Result<()> {
    let bridge = host
        .link_index(&network.bridge)?
        .ok_or_else(|| other(format!("the node has no bridge {}", network.bridge)))?;
    if let Some(stale) = host.link_index(&network.host_veth)? {
        host.delete_link(stale)?;
    }
    host.add_veth(&network.host_veth, TASK_INTERFACE, netns.as_raw_fd())
        .map_err(|e| other(format!("cannot make veth {}: {e}", network.host_veth)))?;
    let host_end = host
        .link_index(&network.host_veth)?
        .ok_or_else(|| other(format!("veth {} vanished once made", network.host_veth)))?;
    host.set_up(host_end, Some(bridge))?;
    if let Some(lo) = inside.link_index("lo")? {
        inside.set_up(lo, None)?;
    }
    let eth0 = inside
        .link_index(TASK_INTERFACE)?
        .ok_or_else(|| other("the task's eth0 did not arrive in its namespace".to_owned()))?;
    let address = Ipv4Net::new(network.ip, network.prefix_len)
        .map_err(|e| other(format!("task address {}: {e}", network.ip)))?;
    inside.add_address(eth0, address)?;
    inside.set_up(eth0, None)?;
    inside.replace_route(&Route {
        destination: Ipv4Net::default(),
        gateway: Some(network.gateway),
        oif: Some(eth0),
        protocol: libc::RTPROT_BOOT,
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn veth_names_fit_and_differ() {
        let a = host_veth_name("0d4f6c1e-1111-2222-3333-444455556666-1");
        let b = host_veth_name("0d4f6c1e-1111-2222-3333-444455556666-2");
        assert!(a.len() <= 15, "{a}");
        assert!(a.starts_with("lv"));
        assert_ne!(a, b);
        assert_eq!(a, host_veth_name("0d4f6c1e-1111-2222-3333-444455556666-1"));
    }

    #[test]
    fn the_gateway_is_the_first_host() {
        let net: Ipv4Net = "10.77.3.0/24".parse().unwrap();
        assert_eq!(gateway_of(net), Some(Ipv4Addr::new(10, 77, 3, 1)));
    }

    #[test]
    fn routes_skip_the_own_subnet_and_duplicates() {
        let own: Ipv4Net = "10.77.0.0/24".parse().unwrap();
        let peers = vec![
            (own, Ipv4Addr::new(192, 0, 2, 1)),
            ("10.77.2.0/24".parse().unwrap(), Ipv4Addr::new(192, 0, 2, 3)),
            ("10.77.1.0/24".parse().unwrap(), Ipv4Addr::new(192, 0, 2, 2)),
            ("10.77.1.0/24".parse().unwrap(), Ipv4Addr::new(192, 0, 2, 9)),
        ];
        let routes = wanted_routes(Some(own), &peers);
        let destinations: Vec<String> = routes.iter().map(|r| r.destination.to_string()).collect();
        assert_eq!(destinations, ["10.77.1.0/24", "10.77.2.0/24"]);
        assert!(routes.iter().all(|r| r.protocol == ROUTE_PROTOCOL));
    }

    #[test]
    fn bridge_names_are_checked() {
        for good in ["loom0", "lt-123_a", "a"] {
            assert!(check_bridge_name(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "0loom",
            "Loom0",
            "a/b",
            "../x",
            "sixteen-chars-xx",
            "a b",
            "a;b",
        ] {
            assert!(check_bridge_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn forwarding_refuses_names_that_are_paths() {
        for name in ["", "../all", "a/b", ".."] {
            assert!(enable_forwarding(name).is_err(), "{name}");
        }
    }
}
