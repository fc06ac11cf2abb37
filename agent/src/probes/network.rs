//! The network as the workstation sees it: interfaces (link state,
//! addresses, error and drop rates), the default gateway's reachability,
//! latency and loss, DNS resolution of configured names through the system
//! resolver, TCP reachability of key services, and Wi-Fi signal.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use sysinfo::Networks;
use tokio::net::TcpStream;
use vitals_proto::domain::{
    DnsCheck, Gateway, InterfaceInfo, NetworkHealth, ProbeKind, ServiceCheck, WifiInfo,
};

use super::{Probe, Reading, Section, probe_error};
use crate::config::{NetworkSettings, split_host_port};

const KIND: ProbeKind = ProbeKind::Network;

pub struct NetworkProbe {
    settings: NetworkSettings,
    networks: Option<Networks>,
    /// Counters at the previous run, for rates: (errors, drops, when).
    previous: HashMap<String, (u64, u64, Instant)>,
    /// Interfaces seen up with an address while the agent ran.
    were_up: HashSet<String>,
    /// The last default gateway seen, so losing the route is a finding.
    last_gateway: Option<(IpAddr, String)>,
    /// The DNS servers from this run's adapter read (Windows keeps them
    /// per adapter), so the IP helper is asked once a run.
    #[cfg(windows)]
    adapter_resolvers: Vec<String>,
}

impl NetworkProbe {
    pub fn new(settings: NetworkSettings) -> Self {
        NetworkProbe {
            settings,
            networks: None,
            previous: HashMap::new(),
            were_up: HashSet::new(),
            last_gateway: None,
            #[cfg(windows)]
            adapter_resolvers: Vec::new(),
        }
    }

    fn interfaces(&mut self) -> Result<Vec<InterfaceInfo>, String> {
        let mut list = self.read_interfaces()?;
        self.judge(&mut list);
        Ok(list)
    }

    /// On Windows the IP helper, which also gives the operational state
    /// and discards (sysinfo does not); sysinfo if the IP helper fails.
    #[cfg(windows)]
    fn read_interfaces(&mut self) -> Result<Vec<InterfaceInfo>, String> {
        self.adapter_resolvers.clear();
        match crate::win32::adapters::read() {
            Ok(a) => {
                self.adapter_resolvers = a.resolvers;
                Ok(a.interfaces)
            }
            Err(e) => match self.sysinfo_interfaces() {
                Ok(list) if !list.is_empty() => Ok(list),
                _ => Err(e),
            },
        }
    }

    #[cfg(not(windows))]
    fn read_interfaces(&mut self) -> Result<Vec<InterfaceInfo>, String> {
        self.sysinfo_interfaces()
    }

    fn sysinfo_interfaces(&mut self) -> Result<Vec<InterfaceInfo>, String> {
        let networks = match &mut self.networks {
            Some(n) => {
                n.refresh(true);
                n
            }
            None => self.networks.insert(
                Networks::new_with_refreshed_list().map_err(|e| format!("interfaces: {e}"))?,
            ),
        };
        Ok(networks
            .iter()
            .map(|(name, n)| {
                let name = name.to_string_lossy().into_owned();
                let sys = LinuxLink::read(&name);
                InterfaceInfo {
                    mac: if n.mac_address().is_unspecified() {
                        String::new()
                    } else {
                        n.mac_address().to_string()
                    },
                    addresses: n.ip_networks().iter().map(|a| a.to_string()).collect(),
                    rx_bytes: n.total_received(),
                    tx_bytes: n.total_transmitted(),
                    rx_packets: n.total_packets_received(),
                    tx_packets: n.total_packets_transmitted(),
                    rx_errors: n.total_errors_on_received(),
                    tx_errors: n.total_errors_on_transmitted(),
                    mtu: n.mtu(),
                    oper_state: sys.oper_state,
                    rx_dropped: sys.rx_dropped,
                    tx_dropped: sys.tx_dropped,
                    errors_per_min: None,
                    drops_per_min: None,
                    link_lost: false,
                    name,
                }
            })
            .collect())
    }

    /// Error and drop rates since the previous reading, and links lost.
    fn judge(&mut self, list: &mut [InterfaceInfo]) {
        let now = Instant::now();
        for i in list.iter_mut() {
            let errors = i.rx_errors + i.tx_errors;
            let drops = i.rx_dropped + i.tx_dropped;
            if let Some((e0, d0, t0)) = self.previous.get(&i.name) {
                let minutes = now.duration_since(*t0).as_secs_f32() / 60.0;
                if minutes > 0.0 {
                    i.errors_per_min = Some(errors.saturating_sub(*e0) as f32 / minutes);
                    i.drops_per_min = Some(drops.saturating_sub(*d0) as f32 / minutes);
                }
            }
            self.previous.insert(i.name.clone(), (errors, drops, now));
            let up = i.oper_state == "up" || (i.oper_state == "unknown" && !i.addresses.is_empty());
            if up && !i.addresses.is_empty() && i.name != "lo" {
                self.were_up.insert(i.name.clone());
            }
            let down = matches!(i.oper_state.as_str(), "down" | "lowerlayerdown");
            i.link_lost = down && self.were_up.contains(&i.name);
        }
        list.sort_by(|a, b| a.name.cmp(&b.name));
    }

    /// The DNS servers of the adapters that are up, in order, as this
    /// run's interface read found them.
    #[cfg(windows)]
    fn resolvers(&mut self) -> Vec<String> {
        std::mem::take(&mut self.adapter_resolvers)
    }

    #[cfg(not(windows))]
    fn resolvers(&mut self) -> Vec<String> {
        resolvers()
    }

    async fn gateway(&mut self) -> Option<Gateway> {
        if !self.settings.ping_gateway {
            return None;
        }
        let found = netdev::get_default_interface().ok().and_then(|i| {
            let gw = i.gateway.as_ref()?;
            let addr = gw
                .ipv4
                .first()
                .map(|a| IpAddr::V4(*a))
                .or_else(|| gw.ipv6.first().map(|a| IpAddr::V6(*a)))?;
            // Windows names adapters by GUID; the interfaces list uses
            // the name people see ("Ethernet", "Wi-Fi").
            let name = if cfg!(windows) {
                i.friendly_name.clone().unwrap_or_else(|| i.name.clone())
            } else {
                i.name.clone()
            };
            Some((addr, name))
        });
        let (address, interface) = match found {
            Some(g) => {
                self.last_gateway = Some(g.clone());
                g
            }
            None => {
                // The route itself is gone: unreachable, if there was one.
                let (address, interface) = self.last_gateway.clone()?;
                return Some(Gateway {
                    address: address.to_string(),
                    interface,
                    method: "route".into(),
                    sent: 0,
                    received: 0,
                    loss_percent: 100.0,
                    rtt_ms: None,
                });
            }
        };
        Some(
            ping_series(
                address,
                interface,
                self.settings.ping_count,
                self.settings.timeout,
            )
            .await,
        )
    }
}

#[async_trait::async_trait]
impl Probe for NetworkProbe {
    fn kind(&self) -> ProbeKind {
        KIND
    }

    async fn run(&mut self) -> Reading {
        let mut errors = Vec::new();
        let interfaces = self.interfaces().unwrap_or_else(|e| {
            errors.push(probe_error(KIND, e));
            Vec::new()
        });
        let timeout = self.settings.timeout;
        // Names, services and the gateway at once: a broken network costs
        // one round of timeouts, not three.
        let dns = futures_all(
            self.settings
                .dns
                .clone()
                .into_iter()
                .map(|n| resolve(n, timeout)),
        );
        let services = futures_all(
            self.settings
                .services
                .clone()
                .into_iter()
                .map(|s| connect(s.name, s.address, timeout)),
        );
        let (dns, services, gateway) = tokio::join!(dns, services, self.gateway());
        let wifi = wifi();
        Reading {
            section: Some(Section::Network {
                interfaces,
                health: NetworkHealth {
                    gateway,
                    dns,
                    services,
                    wifi,
                    resolvers: self.resolvers(),
                },
            }),
            errors,
        }
    }
}

/// The DNS servers the system resolver asks. Where a local stub
/// (systemd-resolved at 127.0.0.53) stands in front, the servers behind it.
#[cfg(unix)]
fn resolvers() -> Vec<String> {
    let read = |path: &str| {
        std::fs::read_to_string(path)
            .map(|t| parse_resolv_conf(&t))
            .unwrap_or_default()
    };
    let system = read("/etc/resolv.conf");
    if !system.is_empty() && system.iter().all(|s| s.starts_with("127.0.0.53")) {
        let upstream = read("/run/systemd/resolve/resolv.conf");
        if !upstream.is_empty() {
            return upstream;
        }
    }
    system
}

#[cfg(not(any(unix, windows)))]
fn resolvers() -> Vec<String> {
    Vec::new()
}

#[cfg(not(windows))]
fn wifi() -> Vec<WifiInfo> {
    match std::fs::read_to_string("/proc/net/wireless") {
        Ok(text) => parse_wireless(&text),
        Err(_) => Vec::new(),
    }
}

#[cfg(windows)]
fn wifi() -> Vec<WifiInfo> {
    crate::win32::wlan::signals()
}

/// The `nameserver` addresses of a resolv.conf, in order.
pub fn parse_resolv_conf(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            (words.next() == Some("nameserver")).then(|| words.next())?
        })
        .filter(|a| a.parse::<std::net::IpAddr>().is_ok())
        .map(str::to_owned)
        .collect()
}

/// Runs futures concurrently and returns their outputs in order.
async fn futures_all<F>(futures: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let mut set = tokio::task::JoinSet::new();
    for (i, f) in futures.enumerate() {
        set.spawn(async move { (i, f.await) });
    }
    let mut out = Vec::new();
    while let Some(Ok(done)) = set.join_next().await {
        out.push(done);
    }
    out.sort_by_key(|(i, _)| *i);
    out.into_iter().map(|(_, v)| v).collect()
}

/// Resolves `name` through the system resolver (the platform's own
/// lookup, so hosts files and search domains apply as for any program).
async fn resolve(name: String, timeout: Duration) -> DnsCheck {
    let started = Instant::now();
    let host = name.clone();
    let result = tokio::time::timeout(timeout, tokio::net::lookup_host((host.as_str(), 0))).await;
    let millis = started.elapsed().as_secs_f32() * 1000.0;
    let (ok, addresses, error) = match result {
        Ok(Ok(addrs)) => {
            let mut a: Vec<String> = addrs.map(|a| a.ip().to_string()).collect();
            a.sort();
            a.dedup();
            (!a.is_empty(), a, String::new())
        }
        Ok(Err(e)) => (false, Vec::new(), e.to_string()),
        Err(_) => (
            false,
            Vec::new(),
            format!("no answer within {}", humantime::format_duration(timeout)),
        ),
    };
    DnsCheck {
        name,
        ok,
        millis,
        addresses,
        error,
    }
}

/// TCP connect to a key service; the time covers the handshake only (the
/// name is resolved first, and its failure reported as such).
async fn connect(name: String, address: String, timeout: Duration) -> ServiceCheck {
    let mut check = ServiceCheck {
        name,
        address: address.clone(),
        ok: false,
        connect_ms: None,
        error: String::new(),
    };
    let Some((host, port)) = split_host_port(&address) else {
        check.error = "address must be HOST:PORT".into();
        return check;
    };
    let target: SocketAddr =
        match tokio::time::timeout(timeout, tokio::net::lookup_host((host.as_str(), port))).await {
            Ok(Ok(mut a)) => match a.next() {
                Some(a) => a,
                None => {
                    check.error = format!("{host} has no address");
                    return check;
                }
            },
            Ok(Err(e)) => {
                check.error = format!("cannot resolve {host}: {e}");
                return check;
            }
            Err(_) => {
                check.error = format!("cannot resolve {host}: no answer");
                return check;
            }
        };
    let started = Instant::now();
    match tokio::time::timeout(timeout, TcpStream::connect(target)).await {
        Ok(Ok(_)) => {
            check.ok = true;
            check.connect_ms = Some(started.elapsed().as_secs_f32() * 1000.0);
        }
        Ok(Err(e)) => check.error = e.to_string(),
        Err(_) => check.error = format!("no answer within {}", humantime::format_duration(timeout)),
    }
    check
}

/// `count` probes of the gateway: ICMP echo requests where this process
/// may send them (an unprivileged datagram socket, or a raw one as root),
/// otherwise TCP connects (a refused connection proves the gateway answers
/// too). Every ICMP probe lost is checked over TCP before it is believed:
/// a gateway that filters echo requests, or an ICMP receive path that is
/// broken on this system, is not an unreachable gateway (see [`settle`]).
async fn ping_series(address: IpAddr, interface: String, count: u32, timeout: Duration) -> Gateway {
    let icmp = icmp_series(address, count, timeout).await;
    let all_lost = matches!(&icmp, Ok(r) if !r.is_empty() && r.iter().all(Option::is_none));
    // ICMP unusable: TCP measures in its place. Every echo lost: a few
    // connects tell whether the gateway is there at all.
    let tcp = match (&icmp, all_lost) {
        (Err(_), _) => Some(tcp_series(address, count, SPACING, timeout).await),
        // One hop away, a gateway that is there answers a connect in
        // milliseconds; every echo is already lost, so do not wait long.
        (Ok(_), true) => Some(
            tcp_series(
                address,
                count.min(CROSS_CHECKS),
                Duration::ZERO,
                timeout.min(CROSS_CHECK_TIMEOUT),
            )
            .await,
        ),
        _ => None,
    };
    if let Err(e) = &icmp {
        tracing::debug!(%address, error = %e, "echo requests cannot be used here; measuring over TCP");
    }
    let (method, rtts) = settle(icmp, tcp);
    if method == "tcp (icmp lost)" {
        tracing::warn!(
            %address,
            "no echo request to the gateway was answered, but it answers TCP: \
             measured over TCP (echo filtered, or ICMP broken on this system)"
        );
    }
    let sent = rtts.len() as u32;
    let received = rtts.iter().filter(|r| r.is_some()).count() as u32;
    let answered: Vec<Duration> = rtts.iter().flatten().copied().collect();
    Gateway {
        address: address.to_string(),
        interface,
        method: method.into(),
        sent,
        received,
        loss_percent: if sent == 0 {
            0.0
        } else {
            (sent - received) as f32 * 100.0 / sent as f32
        },
        rtt_ms: (!answered.is_empty()).then(|| {
            answered.iter().map(Duration::as_secs_f32).sum::<f32>() * 1000.0 / answered.len() as f32
        }),
    }
}

/// Connects made at once to check a gateway that answered no echo request.
const CROSS_CHECKS: u32 = 3;
/// How long a cross-check connect may take.
const CROSS_CHECK_TIMEOUT: Duration = Duration::from_millis(500);
/// Between the probes of a series.
const SPACING: Duration = Duration::from_millis(100);

/// Which series measures the gateway: ICMP's, unless it could not be sent
/// (then TCP's), or lost every probe while TCP got an answer (then TCP's:
/// the gateway is there). Only when both lose everything is it unreachable.
fn settle(
    icmp: Result<Vec<Option<Duration>>, String>,
    tcp: Option<Vec<Option<Duration>>>,
) -> (&'static str, Vec<Option<Duration>>) {
    match (icmp, tcp) {
        (Err(_), Some(tcp)) => ("tcp", tcp),
        (Ok(icmp), Some(tcp)) if tcp.iter().any(Option::is_some) => {
            if icmp.iter().any(Option::is_some) {
                ("icmp", icmp)
            } else {
                ("tcp (icmp lost)", tcp)
            }
        }
        (Ok(icmp), _) => ("icmp", icmp),
        (Err(_), None) => ("tcp", Vec::new()),
    }
}

/// Round trips of `count` echo requests sent 100 ms apart and awaited
/// together, so a lossy link costs one timeout, not one per lost probe.
/// `Err` when ICMP cannot be used here at all; a probe that could not be
/// sent (rather than went unanswered) makes the series unusable too.
async fn icmp_series(
    address: IpAddr,
    count: u32,
    timeout: Duration,
) -> Result<Vec<Option<Duration>>, String> {
    // Bound explicitly: the client's receiver asks the socket for its own
    // address on every reply and panics where an unbound ICMP socket has
    // none (Wine), which would lose every echo silently.
    let (kind, any) = match address {
        IpAddr::V4(_) => (surge_ping::ICMP::V4, IpAddr::from([0u8; 4])),
        IpAddr::V6(_) => (surge_ping::ICMP::V6, IpAddr::from([0u16; 8])),
    };
    let config = surge_ping::Config::builder()
        .kind(kind)
        .bind(SocketAddr::new(any, 0))
        .build();
    let client = surge_ping::Client::new(&config).map_err(|e| e.to_string())?;
    if let Err(e) = client.get_socket().local_addr() {
        return Err(format!("the ICMP socket has no local address: {e}"));
    }
    let ident = surge_ping::PingIdentifier(fastrand::u16(..));
    let mut set = tokio::task::JoinSet::new();
    for seq in 0..count {
        let client = client.clone();
        set.spawn(async move {
            tokio::time::sleep(SPACING * seq).await;
            let mut pinger = client.pinger(address, ident).await;
            pinger.timeout(timeout);
            match pinger
                .ping(surge_ping::PingSequence(seq as u16), &[0; 16])
                .await
            {
                Ok((_, rtt)) => Ok(Some(rtt)),
                Err(surge_ping::SurgeError::Timeout { .. }) => Ok(None),
                Err(e) => Err(e.to_string()),
            }
        });
    }
    let mut out = Vec::with_capacity(count as usize);
    while let Some(done) = set.join_next().await {
        match done {
            Ok(Ok(r)) => out.push(r),
            Ok(Err(e)) => return Err(e),
            Err(e) => return Err(format!("an echo request task failed: {e}")),
        }
    }
    Ok(out)
}

/// Round trips of `count` TCP connects to port 80, `spacing` apart; a
/// refused connection is an answer.
async fn tcp_series(
    address: IpAddr,
    count: u32,
    spacing: Duration,
    timeout: Duration,
) -> Vec<Option<Duration>> {
    let mut set = tokio::task::JoinSet::new();
    for seq in 0..count {
        set.spawn(async move {
            tokio::time::sleep(spacing * seq).await;
            let started = Instant::now();
            match tokio::time::timeout(timeout, TcpStream::connect((address, 80))).await {
                Ok(Ok(_)) => Some(started.elapsed()),
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                    Some(started.elapsed())
                }
                _ => None,
            }
        });
    }
    let mut out = Vec::with_capacity(count as usize);
    while let Some(done) = set.join_next().await {
        out.push(done.ok().flatten());
    }
    out
}

/// Link state and drop counters from `/sys/class/net` (Linux); elsewhere
/// the state is "unknown" and drops are zero.
struct LinuxLink {
    oper_state: String,
    rx_dropped: u64,
    tx_dropped: u64,
}

impl LinuxLink {
    fn read(name: &str) -> LinuxLink {
        let base = std::path::Path::new("/sys/class/net").join(name);
        let text = |f: &str| std::fs::read_to_string(base.join(f)).map(|s| s.trim().to_owned());
        let num = |f: &str| text(f).ok().and_then(|s| s.parse().ok()).unwrap_or(0);
        LinuxLink {
            oper_state: text("operstate").unwrap_or_else(|_| "unknown".into()),
            rx_dropped: num("statistics/rx_dropped"),
            tx_dropped: num("statistics/tx_dropped"),
        }
    }
}

/// The address in a Windows `SOCKADDR` (family, then `SOCKADDR_IN` or
/// `SOCKADDR_IN6` layout), as the IP helper returns it.
pub fn sockaddr_ip(bytes: &[u8]) -> Option<IpAddr> {
    const AF_INET: u16 = 2;
    const AF_INET6: u16 = 23;
    let family = u16::from_le_bytes([*bytes.first()?, *bytes.get(1)?]);
    match family {
        AF_INET => {
            let b: [u8; 4] = bytes.get(4..8)?.try_into().ok()?;
            Some(IpAddr::from(b))
        }
        AF_INET6 => {
            let b: [u8; 16] = bytes.get(8..24)?.try_into().ok()?;
            Some(IpAddr::from(b))
        }
        _ => None,
    }
}

/// `IF_OPER_STATUS` (ifdef.h) in the words Linux's operstate uses.
pub fn oper_state_text(code: i32) -> &'static str {
    match code {
        1 => "up",
        2 => "down",
        3 => "testing",
        5 => "dormant",
        6 => "notpresent",
        7 => "lowerlayerdown",
        _ => "unknown",
    }
}

/// A hardware address as `aa:bb:cc:dd:ee:ff`; empty when there is none.
pub fn mac_text(bytes: &[u8]) -> String {
    if bytes.iter().all(|b| *b == 0) {
        return String::new();
    }
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Wi-Fi interfaces from Linux's `/proc/net/wireless`.
pub fn parse_wireless(text: &str) -> Vec<WifiInfo> {
    text.lines()
        .skip(2)
        .filter_map(|line| {
            let (name, rest) = line.split_once(':')?;
            let mut fields = rest.split_whitespace();
            let _status = fields.next()?;
            let num = |s: &str| s.trim_end_matches('.').parse::<f32>().ok();
            let link_quality = num(fields.next()?)?;
            let signal_dbm = num(fields.next()?)?;
            Some(WifiInfo {
                interface: name.trim().to_owned(),
                link_quality,
                signal_dbm,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_adapter_words() {
        // A SOCKADDR_IN for 10.20.5.31 and a SOCKADDR_IN6 for fe80::1, as
        // GetAdaptersAddresses lays them out.
        let v4 = [2u8, 0, 0, 0, 10, 20, 5, 31, 0, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(sockaddr_ip(&v4), Some("10.20.5.31".parse().expect("ip")));
        let mut v6 = [0u8; 28];
        v6[0] = 23;
        v6[8] = 0xfe;
        v6[9] = 0x80;
        v6[23] = 1;
        assert_eq!(sockaddr_ip(&v6), Some("fe80::1".parse().expect("ip")));
        assert_eq!(sockaddr_ip(&[2, 0, 0]), None, "too short");
        assert_eq!(sockaddr_ip(&[17, 0, 0, 0, 1, 2, 3, 4]), None, "not IP");
        assert_eq!(oper_state_text(1), "up");
        assert_eq!(oper_state_text(7), "lowerlayerdown");
        assert_eq!(oper_state_text(99), "unknown");
        assert_eq!(
            mac_text(&[0x00, 0x1a, 0x2b, 0x3c, 0x4d, 0x5e]),
            "00:1a:2b:3c:4d:5e"
        );
        assert_eq!(mac_text(&[0; 6]), "");
        assert_eq!(mac_text(&[]), "");
    }

    #[test]
    fn wireless_from_proc() {
        let text = include_str!("../../tests/fixtures/proc-net-wireless.txt");
        assert_eq!(
            parse_wireless(text),
            vec![WifiInfo {
                interface: "wlp2s0".into(),
                link_quality: 54.0,
                signal_dbm: -56.0,
            }]
        );
        // Header only (no Wi-Fi), and garbage: nothing, no panic.
        let header: String = text.lines().take(2).collect::<Vec<_>>().join("\n");
        assert!(parse_wireless(&header).is_empty());
        assert!(parse_wireless("x\ny\nwlan0: zz yy\n").is_empty());
    }

    #[test]
    fn resolv_conf_nameservers_in_order() {
        let text = "# generated\nsearch city.example\nnameserver 10.0.0.53\n\
                    nameserver  fd00::53 \nnameserver not-an-address\noptions edns0\n";
        assert_eq!(parse_resolv_conf(text), vec!["10.0.0.53", "fd00::53"]);
        assert!(parse_resolv_conf("search x\n").is_empty());
    }

    #[tokio::test]
    async fn dns_and_services_report_success_and_failure() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let open = listener.local_addr().unwrap();
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let t = Duration::from_secs(2);
        let up = connect("erp".into(), open.to_string(), t).await;
        assert!(up.ok && up.connect_ms.is_some(), "{up:?}");
        let down = connect("files".into(), closed.to_string(), t).await;
        assert!(!down.ok && down.error.contains("refused"), "{down:?}");
        let bad = connect("x".into(), "no-port".into(), t).await;
        assert!(!bad.ok && bad.error.contains("HOST:PORT"));
        let local = resolve("localhost".into(), t).await;
        assert!(local.ok, "{local:?}");
        let missing = resolve("no-such-host.invalid".into(), t).await;
        assert!(!missing.ok && !missing.error.is_empty(), "{missing:?}");
    }

    #[test]
    fn lost_echoes_are_believed_only_if_tcp_gets_no_answer_either() {
        let ms = |v: &[Option<u64>]| -> Vec<Option<Duration>> {
            v.iter().map(|x| x.map(Duration::from_millis)).collect()
        };
        let lost = ms(&[None, None, None]);
        // Every echo lost while the gateway answers TCP (echo filtered, or
        // a broken ICMP receive path): measured over TCP, not 100 % loss.
        let (method, r) = settle(Ok(lost.clone()), Some(ms(&[Some(1), Some(2), None])));
        assert_eq!(method, "tcp (icmp lost)");
        assert_eq!(r.iter().filter(|x| x.is_some()).count(), 2);
        // Both lose everything: unreachable, by ICMP's count.
        let (method, r) = settle(Ok(lost.clone()), Some(lost.clone()));
        assert_eq!((method, r.len()), ("icmp", 3));
        assert!(r.iter().all(Option::is_none));
        // Some echoes answered: ICMP's loss stands.
        let half = ms(&[Some(1), None, Some(1), None]);
        assert_eq!(settle(Ok(half.clone()), None), ("icmp", half));
        // ICMP unusable here: TCP.
        let tcp = ms(&[Some(3), Some(3)]);
        assert_eq!(
            settle(Err("no socket".into()), Some(tcp.clone())),
            ("tcp", tcp)
        );
    }

    #[tokio::test]
    async fn loopback_answers_pings() {
        let g = ping_series(
            "127.0.0.1".parse().unwrap(),
            "lo".into(),
            2,
            Duration::from_secs(1),
        )
        .await;
        // ICMP where allowed, TCP (refused = answered) otherwise: both count.
        assert_eq!(g.sent, 2);
        assert_eq!(g.received, 2, "{g:?}");
        assert_eq!(g.loss_percent, 0.0);
    }
}
