//! Opaque TCP: after the identity checks, bytes are copied both ways until either side
//! closes. Half-closes are forwarded (`copy_bidirectional` shuts the write side down when
//! the other side reaches EOF), so request/response protocols that signal "done" with a
//! FIN keep working.

use std::io;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, copy_bidirectional};
use tokio::net::TcpStream;

/// Copies between `a` and `b` until both directions finished.
pub(crate) async fn splice<A, B>(mut a: A, mut b: B) -> io::Result<()>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    copy_bidirectional(&mut a, &mut b).await.map(|_| ())
}

/// Connects to `addr` within `timeout` (a `TimedOut` error otherwise).
pub(crate) async fn connect(addr: &str, timeout: Duration) -> io::Result<TcpStream> {
    match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(r) => {
            let s = r?;
            let _ = s.set_nodelay(true);
            Ok(s)
        }
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("no connection to {addr} within {timeout:?}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    #[tokio::test]
    async fn splice_round_trips_and_forwards_half_close() {
        // echo server
        let echo = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let echo_addr = echo.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = echo.accept().await.unwrap();
            let mut buf = Vec::new();
            s.read_to_end(&mut buf).await.unwrap();
            s.write_all(&buf).await.unwrap();
        });
        // proxy in front of it
        let front = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let front_addr = front.local_addr().unwrap();
        tokio::spawn(async move {
            let (client, _) = front.accept().await.unwrap();
            let upstream = connect(&echo_addr.to_string(), Duration::from_secs(1))
                .await
                .unwrap();
            splice(client, upstream).await.unwrap();
        });
        let mut c = TcpStream::connect(front_addr).await.unwrap();
        c.write_all(b"hello over tcp").await.unwrap();
        c.shutdown().await.unwrap();
        let mut got = Vec::new();
        c.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"hello over tcp");
    }

    #[tokio::test]
    async fn connect_refused_is_an_error() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        let e = connect(&addr.to_string(), Duration::from_secs(1))
            .await
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused);
    }
}
