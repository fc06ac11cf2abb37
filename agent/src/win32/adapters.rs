//! Network adapters through the IP helper (`GetAdaptersAddresses`, with
//! counters from `GetIfEntry2`), for when sysinfo finds none, and the DNS
//! servers each adapter uses (the Windows resolver's list).

use std::ptr::null;

use vitals_proto::domain::InterfaceInfo;
use windows_sys::Win32::Foundation::ERROR_BUFFER_OVERFLOW;
use windows_sys::Win32::NetworkManagement::IpHelper::{
    GAA_FLAG_SKIP_ANYCAST, GAA_FLAG_SKIP_MULTICAST, GetAdaptersAddresses, GetIfEntry2,
    IP_ADAPTER_ADDRESSES_LH, MIB_IF_ROW2,
};
use windows_sys::Win32::Networking::WinSock::{AF_UNSPEC, SOCKET_ADDRESS};

use super::{Buffer, error, string_at};
use crate::probes::network::{mac_text, oper_state_text, sockaddr_ip};

/// Every adapter, and the DNS servers of those that are up, in order.
pub struct Adapters {
    pub interfaces: Vec<InterfaceInfo>,
    pub resolvers: Vec<String>,
}

fn address(a: &SOCKET_ADDRESS) -> Option<std::net::IpAddr> {
    if a.lpSockaddr.is_null() || a.iSockaddrLength <= 0 {
        return None;
    }
    // SAFETY: the IP helper gives `iSockaddrLength` bytes at `lpSockaddr`.
    let bytes = unsafe {
        std::slice::from_raw_parts(a.lpSockaddr as *const u8, a.iSockaddrLength as usize)
    };
    sockaddr_ip(bytes)
}

pub fn read() -> Result<Adapters, String> {
    let flags = GAA_FLAG_SKIP_ANYCAST | GAA_FLAG_SKIP_MULTICAST;
    let mut size = 16 * 1024u32;
    let mut buf = Buffer::with_bytes(size);
    for _ in 0..4 {
        // SAFETY: `buf` is aligned and writable for `size` bytes.
        let code = unsafe {
            GetAdaptersAddresses(
                u32::from(AF_UNSPEC),
                flags,
                null(),
                buf.ptr().cast(),
                &mut size,
            )
        };
        match code {
            0 => return Ok(decode(&mut buf)),
            ERROR_BUFFER_OVERFLOW => buf = Buffer::with_bytes(size),
            // ERROR_NO_DATA: no adapter at all.
            232 => {
                return Ok(Adapters {
                    interfaces: Vec::new(),
                    resolvers: Vec::new(),
                });
            }
            code => return Err(format!("adapters: GetAdaptersAddresses: {}", error(code))),
        }
    }
    Err("adapters: GetAdaptersAddresses: the list kept growing".into())
}

fn decode(buf: &mut Buffer) -> Adapters {
    let mut interfaces = Vec::new();
    let mut resolvers = Vec::new();
    let mut next = buf.ptr() as *const IP_ADAPTER_ADDRESSES_LH;
    while !next.is_null() {
        // SAFETY: a linked list inside `buf`, each node written by the call.
        let a = unsafe { &*next };
        next = a.Next;
        // SAFETY: the name points into `buf`.
        let name = unsafe { string_at(a.FriendlyName) };
        let mut addresses = Vec::new();
        let mut u = a.FirstUnicastAddress;
        while !u.is_null() {
            // SAFETY: a node of the unicast list inside `buf`.
            let ua = unsafe { &*u };
            if let Some(ip) = address(&ua.Address) {
                addresses.push(format!("{ip}/{}", ua.OnLinkPrefixLength));
            }
            u = ua.Next;
        }
        let oper_state = oper_state_text(a.OperStatus);
        if oper_state == "up" {
            let mut d = a.FirstDnsServerAddress;
            while !d.is_null() {
                // SAFETY: a node of the DNS server list inside `buf`.
                let da = unsafe { &*d };
                if let Some(ip) = address(&da.Address) {
                    let ip = ip.to_string();
                    if !resolvers.contains(&ip) {
                        resolvers.push(ip);
                    }
                }
                d = da.Next;
            }
        }
        let len = (a.PhysicalAddressLength as usize).min(a.PhysicalAddress.len());
        let mut info = InterfaceInfo {
            name,
            mac: mac_text(&a.PhysicalAddress[..len]),
            addresses,
            mtu: u64::from(a.Mtu),
            oper_state: oper_state.into(),
            ..Default::default()
        };
        // SAFETY: a zeroed MIB_IF_ROW2 is a valid input once its LUID is set.
        let mut row: MIB_IF_ROW2 = unsafe { std::mem::zeroed() };
        row.InterfaceLuid = a.Luid;
        // SAFETY: `row` is a valid, writable MIB_IF_ROW2.
        if unsafe { GetIfEntry2(&mut row) } == 0 {
            info.rx_bytes = row.InOctets;
            info.tx_bytes = row.OutOctets;
            info.rx_packets = row.InUcastPkts;
            info.tx_packets = row.OutUcastPkts;
            info.rx_errors = row.InErrors;
            info.tx_errors = row.OutErrors;
            info.rx_dropped = row.InDiscards;
            info.tx_dropped = row.OutDiscards;
        }
        interfaces.push(info);
    }
    Adapters {
        interfaces,
        resolvers,
    }
}
