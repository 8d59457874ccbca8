//! The admin API for kvctl: the cluster views (`/cluster/*`, open) and the admin endpoints
//! (`/admin/*`), signed with the cluster secret for the process at the admin URL, or sent with
//! an admin token (docs/security.md).

use std::time::Duration;

use kv_client::Error;
use reqwest::{Method, StatusCode};
use serde_json::Value;
use tokio::sync::OnceCell;

/// The admin listener of one process.
pub struct Admin {
    http: reqwest::Client,
    url: String,
    signer: Option<kv_transport::Signer>,
    token: Option<String>,
    /// The id of the process (`GET /health/live`), which admin requests are signed for.
    id: OnceCell<String>,
}

impl Admin {
    /// The admin API at `url` (`http://host:port`), calls within `timeout`, trusting `ca_pem`
    /// for `https://`; signed with `secrets`, else sent with the admin `token`, if given.
    pub fn new(
        url: &str,
        timeout: Duration,
        ca_pem: Option<&[u8]>,
        secrets: Option<&kv_transport::Secrets>,
        token: Option<String>,
    ) -> Result<Admin, Error> {
        let mut builder = reqwest::Client::builder().timeout(timeout);
        if let Some(pem) = ca_pem {
            let certs = reqwest::Certificate::from_pem_bundle(pem)
                .map_err(|e| Error::Protocol(format!("the CA is not PEM certificates: {e}")))?;
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        Ok(Admin {
            http: builder.build().map_err(|e| Error::Protocol(format!("HTTP client: {e}")))?,
            url: url.trim_end_matches('/').to_owned(),
            signer: secrets.map(kv_transport::Signer::new),
            token,
            id: OnceCell::new(),
        })
    }

    /// `GET` of an open route (`/cluster/members`, `/health/live`) as JSON.
    pub async fn view(&self, path: &str) -> Result<Value, Error> {
        let url = format!("{}{path}", self.url);
        let response = self.http.get(&url).send().await.map_err(|e| Error::transport(&url, &e))?;
        json(response, &[StatusCode::OK]).await
    }

    /// The id of the process at the admin URL.
    pub async fn id(&self) -> Result<String, Error> {
        let id = self
            .id
            .get_or_try_init(|| async {
                let body = self.view("/health/live").await?;
                body["id"].as_str().map(str::to_owned).ok_or_else(|| Error::Protocol("/health/live names no id".into()))
            })
            .await?;
        Ok(id.clone())
    }

    /// An admin request (`GET` or `POST` on a path under `/admin/`, with its query): its JSON
    /// answer when its status is one of `expected`.
    pub async fn call(&self, method: &str, path: &str, expected: &[StatusCode]) -> Result<Value, Error> {
        let body = self.bytes(method, path, Vec::new(), expected).await?;
        serde_json::from_slice(&body).map_err(|e| Error::Protocol(format!("{path}: {e}")))
    }

    /// An admin request with a body (signed over it), its answer's bytes when its status is one
    /// of `expected`.
    pub async fn bytes(
        &self,
        method: &str,
        path: &str,
        body: Vec<u8>,
        expected: &[StatusCode],
    ) -> Result<Vec<u8>, Error> {
        let url = format!("{}{path}", self.url);
        let method = Method::from_bytes(method.to_ascii_uppercase().as_bytes())
            .map_err(|_| Error::Protocol(format!("not an HTTP method: {method:?}")))?;
        let mut request = self.http.request(method.clone(), &url);
        if let Some(signer) = &self.signer {
            let to = self.id().await?;
            request = request.header(kv_transport::SIGNATURE_HEADER, signer.sign(method.as_str(), path, &to, &body));
        } else if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        let response = request.body(body).send().await.map_err(|e| Error::transport(&url, &e))?;
        let status = response.status();
        let answer = response.bytes().await.map_err(|e| Error::transport(&url, &e))?;
        if !expected.contains(&status) {
            return Err(Error::from_answer(status.as_u16(), &answer));
        }
        Ok(answer.to_vec())
    }

    /// [`Admin::call`] expecting `200`.
    pub async fn get(&self, path: &str) -> Result<Value, Error> {
        self.call("GET", path, &[StatusCode::OK]).await
    }
}

async fn json(response: reqwest::Response, expected: &[StatusCode]) -> Result<Value, Error> {
    let status = response.status();
    let url = response.url().to_string();
    let body = response.bytes().await.map_err(|e| Error::transport(&url, &e))?;
    if !expected.contains(&status) {
        return Err(Error::from_answer(status.as_u16(), &body));
    }
    serde_json::from_slice(&body).map_err(|e| Error::Protocol(format!("{url}: {e}")))
}
