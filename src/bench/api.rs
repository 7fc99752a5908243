//! A client of the server's API as a user drives it: logged in as the
//! bootstrap admin, JSON in and out.

use std::time::Duration;

use serde_json::Value;

use super::{BenchError, BenchResult};

/// An HTTP client trusting only the server's own TLS root, keeping
/// connections alive (one per concurrent client).
pub fn client(tls_root_pem: &[u8]) -> BenchResult<reqwest::Client> {
    let root = reqwest::Certificate::from_pem(tls_root_pem)?;
    Ok(reqwest::Client::builder()
        .add_root_certificate(root)
        .tls_built_in_root_certs(false)
        .pool_max_idle_per_host(1024)
        .timeout(Duration::from_secs(900))
        .build()?)
}

#[derive(Clone)]
pub struct Api {
    pub http: reqwest::Client,
    /// `https://…` of the API listener.
    pub base: String,
    /// `http://…` of the relying parties' listener.
    pub public: String,
    token: String,
}

impl Api {
    pub async fn login(
        http: reqwest::Client,
        base: &str,
        public: &str,
        email: &str,
        password: &str,
    ) -> BenchResult<Api> {
        let r = http
            .post(format!("{base}/api/v1/auth/login"))
            .json(&serde_json::json!({ "email": email, "password": password }))
            .send()
            .await?;
        let (status, body) = (r.status(), r.json::<Value>().await?);
        let token = body["token"]
            .as_str()
            .filter(|_| status.is_success())
            .ok_or_else(|| BenchError::Http(format!("login: {status} {body}")))?;
        Ok(Api {
            http,
            base: base.to_string(),
            public: public.to_string(),
            token: token.to_string(),
        })
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.http.get(self.url(path)).bearer_auth(&self.token)
    }

    pub fn post(&self, path: &str, body: &Value) -> reqwest::RequestBuilder {
        self.http
            .post(self.url(path))
            .bearer_auth(&self.token)
            .json(body)
    }

    /// GET expecting 200 and JSON.
    pub async fn get_json(&self, path: &str) -> BenchResult<Value> {
        let r = self.get(path).send().await?;
        expect(r, 200, path).await
    }

    /// POST expecting `status` and JSON.
    pub async fn post_json(&self, path: &str, body: &Value, status: u16) -> BenchResult<Value> {
        let r = self.post(path, body).send().await?;
        expect(r, status, path).await
    }
}

pub async fn expect(r: reqwest::Response, status: u16, what: &str) -> BenchResult<Value> {
    let got = r.status().as_u16();
    let body = r.text().await?;
    if got != status {
        return Err(BenchError::Http(format!(
            "{what}: expected {status}, got {got}: {}",
            body.chars().take(300).collect::<String>()
        )));
    }
    serde_json::from_str(&body).map_err(|e| BenchError::Http(format!("{what}: {e}")))
}
