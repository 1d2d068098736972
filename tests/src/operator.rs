//! The supervisor's operator endpoints as a test calls them: `POST` and `GET` on the (first)
//! supervisor, the status code and the JSON answer kept whole, so that a test asserts on the
//! refusal's code and words as a user meets them.

use reqwest::StatusCode;
use serde_json::Value;

use crate::cluster::raw;
use crate::Cluster;

impl Cluster {
    /// `POST path` on the (first) supervisor, with `body` as JSON (no body when None) and
    /// `token` as `Authorization: Bearer` when given; the answer must be JSON.
    pub async fn supervisor_post_with(
        &self,
        path: &str,
        body: Option<&Value>,
        token: Option<&str>,
    ) -> (StatusCode, Value) {
        self.supervisor_post_at(0, path, body, token).await
    }

    /// [`Cluster::supervisor_post_with`] on supervisor `k`.
    pub async fn supervisor_post_at(
        &self,
        k: usize,
        path: &str,
        body: Option<&Value>,
        token: Option<&str>,
    ) -> (StatusCode, Value) {
        let mut req = self.http().post(format!("{}{path}", self.supervisor_url_at(k)));
        if let Some(body) = body {
            req = req.json(body);
        }
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        let resp = req.send().await.unwrap_or_else(|e| panic!("POST {path} on the supervisor: {e}"));
        let r = raw(resp).await;
        let json = r
            .json()
            .unwrap_or_else(|| panic!("POST {path} on the supervisor: HTTP {}, not JSON: {}", r.status, r.body));
        (r.status, json)
    }

    /// `POST path` on the supervisor with a JSON body, without a token.
    pub async fn supervisor_post(&self, path: &str, body: &Value) -> (StatusCode, Value) {
        self.supervisor_post_with(path, Some(body), None).await
    }

    /// `GET path` on the (first) supervisor; the answer must be JSON.
    pub async fn supervisor_get(&self, path: &str) -> (StatusCode, Value) {
        self.supervisor_get_at(0, path).await
    }

    /// `GET path` on supervisor `k`; the answer must be JSON.
    pub async fn supervisor_get_at(&self, k: usize, path: &str) -> (StatusCode, Value) {
        let resp = self
            .http()
            .get(format!("{}{path}", self.supervisor_url_at(k)))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path} on the supervisor: {e}"));
        let r = raw(resp).await;
        let json =
            r.json().unwrap_or_else(|| panic!("GET {path} on the supervisor: HTTP {}, not JSON: {}", r.status, r.body));
        (r.status, json)
    }
}
