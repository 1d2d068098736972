//! HTTP calls from this agent to the other agents: keep-alive connections, a timeout on every
//! call, typed answers.

use std::time::Duration;

use protocol::{
    AgentStatus, BatchStateResponse, ClusterBirth, ClusterConfig, DecideRequest, DecideResponse, ErrorBody,
    FailureReport, LogPage, Lsn, PendingInfo, PrepareRequest, PrepareResponse, SnapshotHeader, Term,
};
use reqwest::StatusCode;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// The longest a snapshot may take to arrive whole.
pub const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(600);
/// A snapshot's header is one log entry: far below this.
const MAX_SNAPSHOT_HEADER: usize = 4 << 20;

/// Connecting to a live peer on a LAN takes well under this.
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("{peer} did not answer: {source}")]
    Unreachable { peer: String, source: reqwest::Error },
    #[error("{peer} is in term {term}, higher than ours")]
    StaleTerm { peer: String, term: Term },
    #[error("{peer} answered {status}: {message}")]
    Refused { peer: String, status: StatusCode, message: String },
    /// 410 `log_trimmed`: the peer's log no longer holds what was asked.
    #[error("{peer}'s log no longer reaches that far back (its horizon is LSN {horizon})")]
    Trimmed { peer: String, horizon: Lsn },
}

/// How long the leader waits for a member it could not reach lately before it counts it as
/// still gone: short, because a round at the durability floor waits for it.
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(200);

#[derive(Clone)]
pub struct Peers {
    http: reqwest::Client,
    /// `http` or `https` (with `--tls-*`: the peers are then called over TLS, trusting the
    /// cluster's CA only).
    scheme: &'static str,
}

impl Peers {
    pub fn new(
        timeout: Duration,
        token: Option<&str>,
        tls: Option<&service::Tls>,
    ) -> Result<Peers, service::ClientError> {
        let http = service::client_builder_tls(token, tls)?
            .timeout(timeout)
            .connect_timeout(CONNECT_TIMEOUT)
            .pool_idle_timeout(Duration::from_secs(60))
            .build()?;
        Ok(Peers { http, scheme: if tls.is_some() { "https" } else { "http" } })
    }

    fn url(&self, peer: &str, path: &str) -> String {
        format!("{}://{peer}{path}", self.scheme)
    }

    pub async fn prepare(&self, peer: &str, req: &PrepareRequest) -> Result<PrepareResponse, PeerError> {
        self.post(peer, "/internal/prepare", req).await
    }

    pub async fn decide(&self, peer: &str, req: &DecideRequest) -> Result<DecideResponse, PeerError> {
        self.post(peer, "/internal/decide", req).await
    }

    pub async fn batch_state(&self, peer: &str, batch: &PendingInfo) -> Result<BatchStateResponse, PeerError> {
        let PendingInfo { last_lsn, last_txn, term } = batch;
        let url = self.url(peer, &format!("/internal/batch_state?last_lsn={last_lsn}&last_txn={last_txn}&term={term}"));
        let resp = self.http.get(url).send().await.map_err(|source| unreachable(peer, source))?;
        decode(peer, resp).await
    }

    /// Whether `peer` answers `/health` within [`PROBE_TIMEOUT`].
    pub async fn probe(&self, peer: &str) -> bool {
        let req = self.http.get(self.url(peer, "/health")).timeout(PROBE_TIMEOUT);
        matches!(req.send().await, Ok(resp) if resp.status().is_success())
    }

    pub async fn status(&self, peer: &str) -> Result<AgentStatus, PeerError> {
        self.get(peer, "/status").await
    }

    pub async fn log_page(&self, peer: &str, after: Lsn, limit: i64) -> Result<LogPage, PeerError> {
        self.get(peer, &format!("/replication_log/?after={after}&limit={limit}")).await
    }

    /// The peer's snapshot (`GET /internal/snapshot`): its header, and the accounts in COPY
    /// text format as they stream in. Not bound by the peer timeout: a large table takes a
    /// while; [`SNAPSHOT_TIMEOUT`] bounds the whole transfer.
    pub async fn snapshot(
        &self,
        peer: &str,
    ) -> Result<(SnapshotHeader, impl futures::Stream<Item = Result<bytes::Bytes, PeerError>> + Unpin), PeerError> {
        let resp = self
            .http
            .get(self.url(peer, "/internal/snapshot"))
            .timeout(SNAPSHOT_TIMEOUT)
            .send()
            .await
            .map_err(|source| unreachable(peer, source))?;
        if !resp.status().is_success() {
            return Err(decode::<()>(peer, resp).await.err().unwrap_or_else(|| PeerError::Refused {
                peer: peer.to_string(),
                status: StatusCode::OK,
                message: "no snapshot".into(),
            }));
        }
        let who = peer.to_string();
        let mut body = futures::StreamExt::map(resp.bytes_stream(), move |chunk| {
            chunk.map_err(|source| unreachable(&who, source))
        });
        // The header is the first line; whatever follows it in the same chunk is rows.
        let mut head = Vec::new();
        let rest = loop {
            let Some(chunk) = futures::StreamExt::next(&mut body).await else {
                return Err(PeerError::Refused {
                    peer: peer.to_string(),
                    status: StatusCode::OK,
                    message: "the snapshot ended before its header".into(),
                });
            };
            let chunk = chunk?;
            if let Some(at) = chunk.iter().position(|b| *b == b'\n') {
                head.extend_from_slice(&chunk[..at]);
                break chunk.slice(at + 1..);
            }
            head.extend_from_slice(&chunk);
            if head.len() > MAX_SNAPSHOT_HEADER {
                return Err(PeerError::Refused {
                    peer: peer.to_string(),
                    status: StatusCode::OK,
                    message: "the snapshot's header line is too long".into(),
                });
            }
        };
        let header: SnapshotHeader = serde_json::from_slice(&head).map_err(|e| PeerError::Refused {
            peer: peer.to_string(),
            status: StatusCode::OK,
            message: format!("the snapshot's header is not JSON: {e}"),
        })?;
        let first = futures::stream::iter((!rest.is_empty()).then_some(Ok(rest)));
        Ok((header, futures::StreamExt::chain(first, body)))
    }

    /// Gives a new cluster's id to a member.
    pub async fn announce_birth(&self, peer: &str, birth: &ClusterBirth) -> Result<AgentStatus, PeerError> {
        self.post(peer, "/internal/cluster_id", birth).await
    }

    /// Asks the supervisor to remove a member; it answers with the new configuration.
    pub async fn report_failure(&self, supervisor: &str, report: &FailureReport) -> Result<ClusterConfig, PeerError> {
        self.post(supervisor, "/report_failure", report).await
    }

    async fn get<T: DeserializeOwned>(&self, peer: &str, path: &str) -> Result<T, PeerError> {
        let resp = self.http.get(self.url(peer, path)).send().await.map_err(|source| unreachable(peer, source))?;
        decode(peer, resp).await
    }

    async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        peer: &str,
        path: &'static str,
        body: &B,
    ) -> Result<T, PeerError> {
        let started = std::time::Instant::now();
        let resp =
            self.http.post(self.url(peer, path)).json(body).send().await.map_err(|source| unreachable(peer, source))?;
        let answer = decode(peer, resp).await;
        // The round trip as the caller sees it: network, the peer's work, and both sides' scheduling.
        metrics::histogram!("rmw_peer_call_seconds", "path" => path).record(started.elapsed().as_secs_f64());
        answer
    }
}

fn unreachable(peer: &str, source: reqwest::Error) -> PeerError {
    PeerError::Unreachable { peer: peer.to_string(), source }
}

async fn decode<T: DeserializeOwned>(peer: &str, resp: reqwest::Response) -> Result<T, PeerError> {
    let status = resp.status();
    if status.is_success() {
        return resp.json().await.map_err(|source| unreachable(peer, source));
    }
    let body: Option<ErrorBody> = resp.json().await.ok();
    match body {
        Some(ErrorBody { error, term: Some(term), .. }) if error == "stale_term" => {
            Err(PeerError::StaleTerm { peer: peer.to_string(), term })
        }
        Some(ErrorBody { error, horizon: Some(horizon), .. }) if error == "log_trimmed" => {
            Err(PeerError::Trimmed { peer: peer.to_string(), horizon })
        }
        Some(body) => Err(PeerError::Refused { peer: peer.to_string(), status, message: body.message }),
        None => Err(PeerError::Refused { peer: peer.to_string(), status, message: "no JSON body".into() }),
    }
}
