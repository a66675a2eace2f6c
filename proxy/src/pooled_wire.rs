//! What the two halves of the pooled transport (`outbound::pooled_client`,
//! `inbound::pooled_server`) agree on: the HTTP/2 tuning of a pooled connection and the headers
//! of their small protocol on top of it.

/// Flow-control windows: large enough that one stream can fill a fast link.
pub const STREAM_WINDOW: u32 = 4 << 20;
pub const CONNECTION_WINDOW: u32 = 16 << 20;
pub const MAX_FRAME: u32 = 1 << 20;
/// Bytes h2 may queue per stream, not yet written to the connection, before the writer waits.
/// Only enough to keep the connection's writes busy (four of the copy's 64 KiB reads): the
/// window above, not this queue, is what keeps bytes in flight. A queue as large as the window
/// held up to 4 MiB more per busy stream and moved a pooled stream's bulk no faster (measured,
/// bench/README.md).
pub const SEND_BUF: usize = 256 << 10;
/// Header bytes a stream may carry (its CONNECT line and our few headers need far less); the
/// bound keeps a peer from making us hold large header blocks.
pub const MAX_HEADER_LIST: u32 = 16 << 10;
/// How often a client pings its pooled connection, and how long it waits for the answer before
/// it drops the connection.
pub const PING_EVERY: std::time::Duration = std::time::Duration::from_secs(30);
pub const PING_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Header a peer sets when it refuses a stream because the pooled connection is stale.
pub const RETRY_HEADER: &str = "meshlet-retry";
/// Header of a stream to a Service address over a pooled connection dialed *through* it: the
/// stream goes to the pod address and port where that connection arrived, whatever address it
/// names. A proxy of the previous release does not know it and answers 421.
pub const THROUGH_HEADER: &str = "meshlet-through";
/// Header of the answer to a through stream (and of a 421): the pod address and port the
/// pooled connection arrived at. A client uses it only to tell backends apart for balancing,
/// never to choose where a connection goes (see `outbound::service`).
pub const REACHED_HEADER: &str = "meshlet-reached";
/// Header of a stream to a located pod: the token of the locate that named it (32 hex digits).
pub const LOCATED_HEADER: &str = "meshlet-located";
/// Header of a 403 answer to a stream whose locate token this proxy does not hold.
pub const NOT_LOCATED_HEADER: &str = "meshlet-not-located";
