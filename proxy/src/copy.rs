//! Copying bytes both ways between the two sides of a proxied connection.

use tokio::io::{AsyncRead, AsyncWrite};

use crate::metrics::Metrics;

/// Buffer per direction. TLS records are at most 16 KiB of plaintext, so one record fits.
pub const BUF_SIZE: usize = 16 * 1024;

/// Copies until both directions are finished. A FIN from one side is passed on as a shutdown of
/// the other (TLS: close_notify then FIN), so half-closed protocols work; a reset ends both.
pub async fn bidirectional<A, B>(direction: &'static str, metrics: &Metrics, a: &mut A, b: &mut B)
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    match tokio::io::copy_bidirectional_with_sizes(a, b, BUF_SIZE, BUF_SIZE).await {
        Ok((sent, received)) => metrics.closed(direction, "ok", sent, received),
        Err(e) => {
            tracing::debug!(direction, error = %e, "connection ended with an error");
            metrics.closed(direction, "error", 0, 0);
        }
    }
}
