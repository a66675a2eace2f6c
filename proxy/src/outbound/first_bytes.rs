//! The app's first bytes, when they are already waiting as its connection is accepted (a client
//! that speaks first, such as an HTTP request, usually has sent them by then).
//!
//! A stream over a pooled connection carries them right after its CONNECT, in the same write, so
//! the peer can hand them to its app as soon as it has connected instead of a round trip later
//! (`pooled_client`). They are sent only on a stream whose pooled connection was dialed to the
//! app's destination itself (never to a pod that a locate answer named), and they are kept until
//! the peer accepts the stream, so a retry on another connection sends them again. Whatever path
//! does not send them replays them to the copy first (`Rewind`), so nothing is lost or reordered.

use std::io::Read;

use bytes::Bytes;
use tokio::net::TcpStream;

/// The most read ahead: an HTTP request head with its cookies fits; more waits for the copy.
pub const MAX: usize = 16 * 1024;

/// What the app has already sent, up to [`MAX`] bytes, taken without waiting: empty when
/// nothing is there yet (a server-first protocol) or the connection is closed.
pub fn waiting(app: &TcpStream) -> Bytes {
    let mut buf = [0u8; MAX];
    // The socket is non-blocking (tokio's), so an empty one answers WouldBlock at once. Reading
    // beside tokio is safe: its readiness is only ever cleared by a read of its own that found
    // the socket empty, and any byte that arrives later raises a new edge.
    let sock = socket2::SockRef::from(app);
    match (&*sock).read(&mut buf) {
        Ok(n) => Bytes::copy_from_slice(&buf[..n]),
        Err(_) => Bytes::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        (client, accepted)
    }

    #[tokio::test]
    async fn bytes_already_sent_are_taken_and_the_rest_is_read_as_usual() {
        let (mut client, mut accepted) = pair().await;
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        // Wait until the bytes are in the accepted socket.
        accepted.readable().await.unwrap();
        assert_eq!(&waiting(&accepted)[..], b"GET / HTTP/1.1\r\n\r\n");
        client.write_all(b"more").await.unwrap();
        let mut rest = [0u8; 4];
        accepted.read_exact(&mut rest).await.unwrap();
        assert_eq!(&rest, b"more");
    }

    #[tokio::test]
    async fn a_silent_client_gives_nothing_and_nothing_is_lost() {
        let (mut client, mut accepted) = pair().await;
        assert!(waiting(&accepted).is_empty());
        client.write_all(b"late").await.unwrap();
        let mut got = [0u8; 4];
        accepted.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"late");
    }

    #[tokio::test]
    async fn at_most_max_bytes_are_taken() {
        let (mut client, mut accepted) = pair().await;
        let sent: Vec<u8> = (0..MAX + 100).map(|i| (i % 251) as u8).collect();
        client.write_all(&sent).await.unwrap();
        client.shutdown().await.unwrap();
        // Wait until everything is in the accepted socket.
        let mut peeked = vec![0u8; sent.len()];
        while accepted.peek(&mut peeked).await.unwrap() < sent.len() {
            tokio::task::yield_now().await;
        }
        let mut got = waiting(&accepted).to_vec();
        assert_eq!(got.len(), MAX);
        accepted.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, sent);
    }
}
