//! A small blocking HTTP/1.1 client for the API: what the `sluice` CLI
//! (`upload`, `submit`, `jobs`, `cancel`, `savepoint`) and the integration
//! tests use. One connection per request; no pooling, no TLS (put a proxy
//! in front of a server reached over a network).

use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;

/// What went wrong talking to a server.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The address is not usable.
    #[error("bad server address {0:?}: expected host:port or http://host:port")]
    Address(String),
    /// Connecting or exchanging the request failed.
    #[error("talking to {server}: {message}")]
    Io {
        /// The server.
        server: String,
        /// Why.
        message: String,
    },
}

/// A response: status and body.
#[derive(Debug, Clone)]
pub struct ApiResponse {
    /// HTTP status.
    pub status: u16,
    /// The body.
    pub body: Vec<u8>,
    /// The headers, names in lowercase.
    pub headers: Vec<(String, String)>,
}

impl ApiResponse {
    /// The body as JSON (`null` when it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The API error's message, or the body.
    pub fn error_message(&self) -> String {
        match self.json()["error"]["message"].as_str() {
            Some(m) => m.to_owned(),
            None => self.text(),
        }
    }

    /// The first value of header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// True for 2xx.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// A client of one server, with an optional bearer token.
pub struct Client {
    authority: String,
    token: Option<String>,
    timeout: Duration,
    rt: tokio::runtime::Runtime,
}

impl Client {
    /// A client of `server` (`host:port` or `http://host:port`).
    pub fn new(server: &str, token: Option<String>) -> Result<Self, ClientError> {
        let authority = server.strip_prefix("http://").unwrap_or(server).trim_end_matches('/').to_owned();
        if authority.is_empty() || authority.contains('/') || !authority.contains(':') {
            return Err(ClientError::Address(server.to_owned()));
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| ClientError::Io {
                server: authority.clone(),
                message: e.to_string(),
            })?;
        Ok(Client {
            authority,
            token,
            timeout: Duration::from_secs(600),
            rt,
        })
    }

    /// Send a request; any status is a response, only I/O failures are errors.
    pub fn send(&self, method: &str, path: &str, body: Option<(&str, Vec<u8>)>) -> Result<ApiResponse, ClientError> {
        let io = |e: &dyn std::fmt::Display| ClientError::Io {
            server: self.authority.clone(),
            message: e.to_string(),
        };
        let mut builder = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, &self.authority);
        if let Some(t) = &self.token {
            builder = builder.header(hyper::header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let bytes = match body {
            Some((content_type, b)) => {
                builder = builder.header(hyper::header::CONTENT_TYPE, content_type);
                b
            }
            None => Vec::new(),
        };
        let request = builder.body(Full::new(Bytes::from(bytes))).map_err(|e| io(&e))?;
        let authority = self.authority.clone();
        let exchange = async move {
            let stream = tokio::net::TcpStream::connect(&authority).await.map_err(|e| io(&e))?;
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|e| io(&e))?;
            let driver = tokio::spawn(conn);
            let response = sender.send_request(request).await.map_err(|e| io(&e))?;
            let status = response.status().as_u16();
            let headers = response
                .headers()
                .iter()
                .map(|(k, v)| (k.as_str().to_owned(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
                .collect();
            let body = response.into_body().collect().await.map_err(|e| io(&e))?.to_bytes().to_vec();
            driver.abort();
            Ok(ApiResponse { status, body, headers })
        };
        self.rt.block_on(async {
            tokio::time::timeout(self.timeout, exchange)
                .await
                .unwrap_or_else(|_| Err(io(&"no answer within the timeout")))
        })
    }

    /// GET.
    pub fn get(&self, path: &str) -> Result<ApiResponse, ClientError> {
        self.send("GET", path, None)
    }

    /// POST a JSON body.
    pub fn post_json(&self, path: &str, body: &serde_json::Value) -> Result<ApiResponse, ClientError> {
        self.send(
            "POST",
            path,
            Some(("application/json", serde_json::to_vec(body).unwrap_or_default())),
        )
    }

    /// POST raw bytes.
    pub fn post_bytes(&self, path: &str, body: Vec<u8>) -> Result<ApiResponse, ClientError> {
        self.send("POST", path, Some(("application/octet-stream", body)))
    }

    /// PUT raw bytes.
    pub fn put_bytes(&self, path: &str, body: Vec<u8>) -> Result<ApiResponse, ClientError> {
        self.send("PUT", path, Some(("application/octet-stream", body)))
    }

    /// DELETE.
    pub fn delete(&self, path: &str) -> Result<ApiResponse, ClientError> {
        self.send("DELETE", path, None)
    }
}
