//! The inbound side's HTTP clients to the local app, for ports with HTTP rules.

use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// Pooled clients to the local app, HTTP/1.1 and HTTP/2 (used when the caller speaks HTTP/2).
#[derive(Clone)]
pub struct AppClients {
    pub h1: Client<HttpConnector, Incoming>,
    pub h2: Client<HttpConnector, Incoming>,
}

impl AppClients {
    pub fn new(connect_timeout: std::time::Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(connect_timeout));
        let h1 = Client::builder(TokioExecutor::new()).build(connector.clone());
        let h2 = Client::builder(TokioExecutor::new())
            .http2_only(true)
            .build(connector);
        AppClients { h1, h2 }
    }
}
