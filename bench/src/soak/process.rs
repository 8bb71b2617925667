//! The proxy process as `/proc` shows it: resident memory, whether it still runs, and its open
//! file descriptors, with the TCP sockets among them sorted into client and upstream
//! connections so that descriptors left after the load can be named.

use std::collections::HashMap;
use std::fs;

use serde::Serialize;

use crate::compare::procfs;

/// The `st` column of `/proc/net/tcp` for a listening socket.
const TCP_LISTEN: &str = "0A";

/// The open file descriptors of a process at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Descriptors {
    /// Every entry of `/proc/PID/fd`.
    pub total: usize,
    /// Connections accepted on the data listener (clients).
    pub client: usize,
    /// Connections to the blue or green upstream (the proxy's pool and exchanges in flight).
    pub upstream: usize,
}

impl Descriptors {
    /// Everything but the upstream connections: clients, listeners, files, the runtime's own.
    pub fn besides_upstream(&self) -> usize {
        self.total - self.upstream
    }
}

/// What the soak knows about the proxy's sockets, to sort its descriptors.
#[derive(Clone, Debug)]
pub struct Ports {
    /// The proxy's data listener port: a socket on it is a client connection.
    pub data: u16,
    /// The upstreams' ports: a socket connected to one is an upstream connection.
    pub upstreams: Vec<u16>,
}

/// Resident memory (`VmRSS`) of `pid` in MiB, or `None` once the process is gone.
pub fn rss_mib(pid: u32) -> Option<f64> {
    match procfs::rss_bytes(&[pid]) {
        0 => None,
        bytes => Some(bytes as f64 / (1024.0 * 1024.0)),
    }
}

/// Whether `pid` exists and is not a zombie waiting to be reaped.
pub fn alive(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/status")).is_ok_and(|status| {
        status
            .lines()
            .find_map(|line| line.strip_prefix("State:"))
            .is_some_and(|state| !state.trim_start().starts_with('Z'))
    })
}

/// The open descriptors of `pid`, sockets sorted by `ports`; `None` once the process is gone.
pub fn descriptors(pid: u32, ports: &Ports) -> Option<Descriptors> {
    let entries = fs::read_dir(format!("/proc/{pid}/fd")).ok()?;
    let sockets = tcp_sockets(pid);
    let mut found = Descriptors::default();
    for entry in entries.flatten() {
        found.total += 1;
        let Some(inode) = fs::read_link(entry.path()).ok().and_then(|target| {
            let target = target.to_str()?;
            target
                .strip_prefix("socket:[")?
                .strip_suffix(']')?
                .parse()
                .ok()
        }) else {
            continue;
        };
        match sockets.get(&inode) {
            Some(socket) if socket.listening => {}
            Some(socket) if socket.local_port == ports.data => found.client += 1,
            Some(socket) if ports.upstreams.contains(&socket.remote_port) => found.upstream += 1,
            _ => {}
        }
    }
    Some(found)
}

/// One row of `/proc/net/tcp{,6}`: what sorting a descriptor needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct TcpSocket {
    /// A socket on the proxy's data port is a client connection.
    local_port: u16,
    /// A socket connected to an upstream's port is an upstream connection.
    remote_port: u16,
    /// The listeners themselves are neither.
    listening: bool,
}

/// The TCP sockets of `pid`'s network namespace by inode, IPv4 and IPv6.
fn tcp_sockets(pid: u32) -> HashMap<u64, TcpSocket> {
    ["tcp", "tcp6"]
        .iter()
        .filter_map(|table| fs::read_to_string(format!("/proc/{pid}/net/{table}")).ok())
        .flat_map(|text| {
            text.lines()
                .skip(1)
                .filter_map(parse_tcp_line)
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Parses `sl local_address rem_address st ... inode` (addresses as `HEXADDR:HEXPORT`).
fn parse_tcp_line(line: &str) -> Option<(u64, TcpSocket)> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let port = |address: &str| u16::from_str_radix(address.rsplit_once(':')?.1, 16).ok();
    let socket = TcpSocket {
        local_port: port(fields.get(1)?)?,
        remote_port: port(fields.get(2)?)?,
        listening: *fields.get(3)? == TCP_LISTEN,
    };
    Some((fields.get(9)?.parse().ok()?, socket))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_tcp_table_line() {
        let line = "   3: 0100007F:A1B2 0100007F:1F90 01 00000000:00000000 00:00000000 \
                    00000000     0        0 4242 1 0000000000000000 20 4 30 10 -1";
        assert_eq!(
            parse_tcp_line(line),
            Some((
                4242,
                TcpSocket {
                    local_port: 0xA1B2,
                    remote_port: 8080,
                    listening: false
                }
            ))
        );
    }

    #[test]
    fn sorts_this_process_sockets() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let client = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
        let (_accepted, _) = listener.accept().expect("accept");
        let me = std::process::id();
        let ports = Ports {
            data: port,
            upstreams: vec![port],
        };
        let found = descriptors(me, &ports).expect("this process");
        // The accepted end is on the listener's port; the client end is connected to it.
        assert_eq!((found.client, found.upstream), (1, 1));
        assert!(found.total >= 3);
        assert!(alive(me));
        assert!(rss_mib(me).is_some_and(|mib| mib > 0.0));
        drop(client);
    }
}
