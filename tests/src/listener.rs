//! A stand-in for a client web app: an HTTP server that records every `POST /leader_changed/`
//! the supervisor sends it.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Value};

type Received = Arc<Mutex<Vec<Value>>>;

/// Listens on a free port of 127.0.0.1 until dropped.
pub struct LeaderChangedListener {
    address: SocketAddr,
    /// `http`, or `https` for a cluster with TLS.
    scheme: &'static str,
    received: Received,
    server: tokio::task::JoinHandle<()>,
}

impl LeaderChangedListener {
    /// A listener the supervisor of `c` can call: over HTTPS with the harness's certificate
    /// when `c` runs with TLS.
    pub async fn start_for(c: &crate::Cluster) -> Self {
        Self::serve(c.pki().map(|pki| pki.load("harness"))).await
    }

    /// A plain HTTP listener.
    pub async fn start() -> Self {
        Self::serve(None).await
    }

    async fn serve(tls: Option<service::Tls>) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1:0");
        let address = listener.local_addr().expect("local_addr");
        let received: Received = Arc::default();
        let app = Router::new().route("/leader_changed/", post(record)).with_state(received.clone());
        let scheme = if tls.is_some() { "https" } else { "http" };
        let server = tokio::spawn(async move {
            if let Err(e) = service::serve(listener, app, tls.as_ref(), std::future::pending()).await {
                eprintln!("the /leader_changed/ listener stopped: {e}");
            }
        });
        LeaderChangedListener { address, scheme, received, server }
    }

    /// The URL to register with the supervisor.
    pub fn url(&self) -> String {
        format!("{}://{}/leader_changed/", self.scheme, self.address)
    }

    /// Every body received so far, in order (a body that is not JSON is kept as a string).
    pub fn received(&self) -> Vec<Value> {
        self.received.lock().unwrap().clone()
    }

    /// Waits until a body for which `wanted` holds has arrived, and returns it; panics after
    /// `timeout` with what did arrive.
    pub async fn wait_for(&self, timeout: Duration, wanted: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(found) = self.received().into_iter().find(|b| wanted(b)) {
                return found;
            }
            if Instant::now() > deadline {
                panic!("no wanted POST /leader_changed/ within {timeout:?}; received: {:?}", self.received());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn record(State(received): State<Received>, body: Bytes) -> Json<Value> {
    let value = serde_json::from_slice(&body).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into()));
    received.lock().unwrap().push(value);
    Json(json!({"ok": true}))
}

impl Drop for LeaderChangedListener {
    fn drop(&mut self) {
        self.server.abort();
    }
}
