//! Binding a listener the same way in every process.
//!
//! Pods listen on `[::]:<port>` so that IPv6-only and dual-stack clusters
//! reach them; on Linux that socket takes IPv4 connections too. A node with
//! IPv6 switched off in its kernel cannot bind `[::]` at all: there the
//! unspecified IPv4 address is bound instead, and the fallback is logged.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};

use tokio::net::TcpListener;

/// Binds `addr`; `[::]:p` falls back to `0.0.0.0:p` when the host has no
/// IPv6.
///
/// # Errors
/// The bind failed (and, for `[::]`, so did the IPv4 fallback).
pub async fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    match TcpListener::bind(addr).await {
        Ok(l) => Ok(l),
        Err(e) if addr.is_ipv6() && addr.ip().is_unspecified() => {
            let v4 = SocketAddr::from((Ipv4Addr::UNSPECIFIED, addr.port()));
            match TcpListener::bind(v4).await {
                Ok(l) => {
                    tracing::warn!(%addr, fallback = %v4, error = %e, "no IPv6 on this host; listening on IPv4 only");
                    Ok(l)
                }
                Err(_) => Err(e),
            }
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_unspecified_ipv6_address_takes_ipv4_connections() {
        let l = bind("[::]:0".parse().unwrap()).await.unwrap();
        let port = l.local_addr().unwrap().port();
        let accept = tokio::spawn(async move { l.accept().await.map(|(_, peer)| peer) });
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        let peer = accept.await.unwrap().unwrap();
        assert!(peer.ip().to_canonical().is_loopback(), "{peer}");
    }
}
