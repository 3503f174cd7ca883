//! Protocol detection from a connection's first bytes, without consuming them.
//!
//! [`classify`] is pure (table-tested); [`sniff`] peeks at a socket until `classify`
//! decides or the deadline passes. A client that sends nothing (server-speaks-first
//! protocols such as SMTP or MySQL) is reported as [`Sniffed::Silent`].

use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::Instant;

/// The HTTP/2 connection preface (RFC 9113 §3.4).
pub(crate) const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// HTTP/1 request methods we recognise, each followed by a space.
const METHODS: &[&[u8]] = &[
    b"GET ",
    b"POST ",
    b"PUT ",
    b"DELETE ",
    b"HEAD ",
    b"OPTIONS ",
    b"PATCH ",
    b"CONNECT ",
    b"TRACE ",
];

/// How many bytes decide: enough for the whole h2 preface.
const SNIFF_LEN: usize = H2_PREFACE.len();

/// What a connection's prefix says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Detected {
    /// A TLS handshake record (content type 22, version major 3).
    Tls,
    Http1,
    Http2,
    /// Anything else: opaque TCP.
    Opaque,
    /// The bytes so far are a proper prefix of something recognisable.
    NeedMore,
}

/// Classifies a connection prefix. Pure.
pub(crate) fn classify(prefix: &[u8]) -> Detected {
    if prefix.is_empty() {
        return Detected::NeedMore;
    }
    if prefix[0] == 0x16 {
        return match prefix.get(1) {
            None => Detected::NeedMore,
            Some(3) => Detected::Tls,
            Some(_) => Detected::Opaque,
        };
    }
    if prefix.len() >= H2_PREFACE.len() && prefix.starts_with(H2_PREFACE) {
        return Detected::Http2;
    }
    let mut could_be_more = H2_PREFACE.starts_with(prefix);
    for m in METHODS {
        if prefix.starts_with(m) {
            // "PRI " is not a method we accept, so no overlap with the preface.
            return Detected::Http1;
        }
        could_be_more |= m.starts_with(prefix);
    }
    if could_be_more {
        Detected::NeedMore
    } else {
        Detected::Opaque
    }
}

/// The outcome of peeking at a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sniffed {
    Is(Detected),
    /// The client sent nothing within the deadline.
    Silent,
    /// The client closed (or the socket failed) before saying anything useful.
    Closed,
}

/// Peeks at `stream` until the prefix decides or `timeout` passes. Bytes that arrived
/// but stayed ambiguous until the deadline count as opaque TCP.
pub(crate) async fn sniff(stream: &TcpStream, timeout: Duration) -> Sniffed {
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; SNIFF_LEN];
    let mut seen = 0;
    loop {
        let peeked = tokio::time::timeout_at(deadline, stream.peek(&mut buf)).await;
        let n = match peeked {
            Err(_) if seen == 0 => return Sniffed::Silent,
            Err(_) => return Sniffed::Is(Detected::Opaque),
            Ok(Err(_)) | Ok(Ok(0)) => return Sniffed::Closed,
            Ok(Ok(n)) => n,
        };
        match classify(&buf[..n]) {
            Detected::NeedMore if n < SNIFF_LEN => {
                seen = n;
                // `peek` returns at once while bytes are buffered; wait a little for
                // more instead of spinning.
                if Instant::now() + Duration::from_millis(5) >= deadline {
                    return Sniffed::Is(Detected::Opaque);
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Detected::NeedMore => return Sniffed::Is(Detected::Opaque),
            d => return Sniffed::Is(d),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classify_table() {
        use Detected::*;
        let cases: &[(&[u8], Detected)] = &[
            (b"", NeedMore),
            (b"\x16", NeedMore),
            (b"\x16\x03\x01\x02\x00", Tls),
            (b"\x16\x01", Opaque),
            (b"GET / HTTP/1.1\r\n", Http1),
            (b"CONNECT a:1 HTTP/1.1\r\n", Http1),
            (b"DELETE ", Http1),
            (b"GE", NeedMore),
            (b"GET", NeedMore),
            (b"GETX", Opaque),
            (b"get / HTTP/1.1", Opaque),
            (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", Http2),
            (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\nxyz", Http2),
            (b"PRI * HTTP/2.0\r\n", NeedMore),
            (b"PRI * HTTP/1.0\r\n", Opaque),
            (b"P", NeedMore),
            (b"\x00\x00\x00\x0a", Opaque),
            (b"SSH-2.0-OpenSSH", Opaque),
            (b"EHLO example.com", Opaque),
        ];
        for (prefix, want) in cases {
            assert_eq!(
                classify(prefix),
                *want,
                "{:?}",
                String::from_utf8_lossy(prefix)
            );
        }
    }

    #[tokio::test]
    async fn sniff_reads_without_consuming_and_times_out_on_silence() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (client, server) = tokio::join!(TcpStream::connect(addr), listener.accept());
        let (mut client, server) = (client.unwrap(), server.unwrap().0);

        let t = Duration::from_millis(100);
        assert_eq!(sniff(&server, t).await, Sniffed::Silent);

        client.write_all(b"GE").await.unwrap();
        let s = tokio::spawn(async move {
            let r = sniff(&server, Duration::from_secs(2)).await;
            (r, server)
        });
        tokio::time::sleep(Duration::from_millis(30)).await;
        client.write_all(b"T / HTTP/1.1\r\n").await.unwrap();
        let (r, ref mut server) = s.await.unwrap();
        assert_eq!(r, Sniffed::Is(Detected::Http1));
        let mut got = [0u8; 4];
        server.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"GET ", "peeking consumed nothing");

        drop(client);
        let mut rest = Vec::new();
        server.read_to_end(&mut rest).await.unwrap();
        assert_eq!(sniff(server, t).await, Sniffed::Closed);
    }
}
