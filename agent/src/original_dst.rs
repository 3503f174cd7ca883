//! Recovering where a transparently intercepted connection was going.
//!
//! In transparent mode `wardmesh-agent init-iptables` makes the kernel `REDIRECT` the
//! pod's TCP to the agent's listeners (DESIGN.md §3). The connection's conntrack entry
//! still remembers the address the app (or the remote peer) dialled; `SO_ORIGINAL_DST`
//! (IPv4) and `IP6T_SO_ORIGINAL_DST` (IPv6) read it back.

use std::io;
use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::AsFd;

use nix::errno::Errno;
use nix::sys::socket::sockopt::{Ip6tOriginalDst, OriginalDst};
use nix::sys::socket::{SockaddrIn, SockaddrIn6, getsockopt};

/// The destination `stream` had before an iptables `REDIRECT` sent it to us.
///
/// Returns `Ok(None)` when the connection was not redirected: the kernel has no NAT
/// record for it (`ENOENT`, or `ENOPROTOOPT` when conntrack is not loaded at all), or the
/// recorded destination is our own listening address (a client that dialled the proxy
/// port directly, e.g. an explicit-mode app or another agent).
pub fn original_dst(stream: &tokio::net::TcpStream) -> io::Result<Option<SocketAddr>> {
    let local = stream.local_addr()?;
    let recovered = match local {
        SocketAddr::V4(_) => ipv4(stream),
        // An IPv4 client accepted on a dual-stack (`[::]`) listener: conntrack tracked
        // it as IPv4.
        SocketAddr::V6(v6) if v6.ip().to_ipv4_mapped().is_some() => match ipv4(stream) {
            Ok(Some(addr)) => Ok(Some(addr)),
            Ok(None) | Err(_) => ipv6(stream),
        },
        SocketAddr::V6(_) => ipv6(stream),
    }?;
    Ok(recovered.filter(|dst| !same_endpoint(*dst, local)))
}

fn ipv4(fd: &impl AsFd) -> io::Result<Option<SocketAddr>> {
    match getsockopt(fd, OriginalDst) {
        Ok(raw) => Ok(Some(SocketAddr::V4(SocketAddrV4::from(SockaddrIn::from(
            raw,
        ))))),
        Err(e) => not_redirected(e),
    }
}

fn ipv6(fd: &impl AsFd) -> io::Result<Option<SocketAddr>> {
    match getsockopt(fd, Ip6tOriginalDst) {
        Ok(raw) => Ok(Some(SocketAddr::V6(SocketAddrV6::from(SockaddrIn6::from(
            raw,
        ))))),
        Err(e) => not_redirected(e),
    }
}

fn not_redirected(e: Errno) -> io::Result<Option<SocketAddr>> {
    match e {
        Errno::ENOENT | Errno::ENOPROTOOPT => Ok(None),
        other => Err(io::Error::from(other)),
    }
}

/// Equal as endpoints, treating `::ffff:a.b.c.d` and `a.b.c.d` as the same address.
fn same_endpoint(a: SocketAddr, b: SocketAddr) -> bool {
    let canon = |s: SocketAddr| (s.ip().to_canonical(), s.port());
    canon(a) == canon(b)
}

#[cfg(test)]
mod tests {
    use tokio::net::{TcpListener, TcpStream};

    use super::*;

    async fn pair(bind: &str) -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind(bind).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (client.unwrap(), accepted.unwrap().0)
    }

    #[tokio::test]
    async fn a_direct_loopback_connection_was_not_redirected() {
        let (client, accepted) = pair("127.0.0.1:0").await;
        assert_eq!(original_dst(&accepted).unwrap(), None, "server side");
        assert_eq!(original_dst(&client).unwrap(), None, "client side");
    }

    #[tokio::test]
    async fn a_direct_ipv6_connection_was_not_redirected() {
        // Hosts without IPv6 loopback cannot run this case; everything else must.
        let Ok(listener) = TcpListener::bind("[::1]:0").await else {
            eprintln!("no IPv6 loopback here: IPv6 case not exercised");
            return;
        };
        let addr = listener.local_addr().unwrap();
        let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        let (_client, accepted) = (client.unwrap(), accepted.unwrap().0);
        assert_eq!(original_dst(&accepted).unwrap(), None);
    }

    #[test]
    fn mapped_and_plain_ipv4_are_the_same_endpoint() {
        let v4: SocketAddr = "10.1.2.3:80".parse().unwrap();
        let mapped: SocketAddr = "[::ffff:10.1.2.3]:80".parse().unwrap();
        assert!(same_endpoint(v4, mapped));
        assert!(!same_endpoint(v4, "10.1.2.3:81".parse().unwrap()));
        assert!(!same_endpoint(v4, "10.1.2.4:80".parse().unwrap()));
    }
}
