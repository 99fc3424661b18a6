//! The HTTP client of the admin API, over TCP or a unix socket, and the failures that map to
//! the CLI's exit codes.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde::Deserialize;
use serde_json::Value;
use supersocket_proto::ErrorBody;

/// A failure, with the exit code of SPEC §7.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    /// The operation failed or a server/session does not exist: exit 1.
    #[error("{0}")]
    Failed(String),
    /// The command line asks for something that cannot be sent: exit 2.
    #[error("{0}")]
    Usage(String),
    /// The host cannot be reached: exit 3.
    #[error("cannot reach the host at {url}: {cause}")]
    Unreachable {
        /// The URL tried.
        url: String,
        /// Why.
        cause: String,
    },
    /// The token is missing or wrong: exit 4.
    #[error("unauthorized at {url}: {message} (set --token or SUPERSOCKET_TOKEN)")]
    Unauthorized {
        /// The URL tried.
        url: String,
        /// The host's message.
        message: String,
    },
    /// The token's role may not do this: exit 4.
    #[error("forbidden at {url}: {message}")]
    Forbidden {
        /// The URL tried.
        url: String,
        /// The host's message.
        message: String,
    },
}

impl CtlError {
    /// The process exit code for this failure.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Failed(_) => 1,
            Self::Usage(_) => 2,
            Self::Unreachable { .. } => 3,
            Self::Unauthorized { .. } | Self::Forbidden { .. } => 4,
        }
    }
}

/// One answer: its status and JSON body (`null` when empty).
pub struct Answer {
    /// HTTP status.
    pub status: StatusCode,
    /// The body as JSON.
    pub body: Value,
    /// Its `ETag` header, if any.
    pub etag: Option<String>,
}

impl Answer {
    /// The answer if it is a success; else a failure carrying the host's message.
    pub fn success(self) -> Result<Self, CtlError> {
        if self.status.is_success() {
            Ok(self)
        } else {
            Err(CtlError::Failed(message(&self.body, self.status)))
        }
    }
}

/// A request body as read from a file.
#[derive(Clone)]
pub struct Body {
    /// The file's bytes, sent unchanged.
    pub bytes: Vec<u8>,
    /// Whether they are TOML (else JSON): the `Content-Type` the host reads them by.
    pub toml: bool,
}

/// Time allowed beyond a drain's bound for the host to answer.
const DRAIN_MARGIN: Duration = Duration::from_secs(10);

/// The admin API at one URL.
pub struct Client {
    http: reqwest::Client,
    /// Where requests go (`http://localhost` over a unix socket).
    base: String,
    /// The URL as the user gave it, for messages.
    url: String,
    token: Option<String>,
    /// Longest wait for one answer (`--timeout`, or longer for a drain).
    timeout: Duration,
}

impl Client {
    /// A client for `url` (`http://IP:PORT` or `unix:/path`).
    pub fn new(url: &str, token: Option<String>, timeout: Duration) -> Result<Self, CtlError> {
        if let Some(token) = &token
            && !token.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(CtlError::Usage(
                "--token (or SUPERSOCKET_TOKEN) has a space, a control or a non-ASCII character; a bearer token is visible ASCII".into(),
            ));
        }
        let builder = reqwest::Client::builder().no_proxy();
        let (builder, base) = match url.strip_prefix("unix:") {
            Some(path) => (builder.unix_socket(path), "http://localhost".to_owned()),
            None if url.starts_with("http://") || url.starts_with("https://") => {
                (builder, url.trim_end_matches('/').to_owned())
            }
            None => {
                return Err(CtlError::Failed(format!(
                    "--url {url:?} must start with http:// or unix:"
                )));
            }
        };
        let http = builder
            .build()
            .map_err(|e| CtlError::Failed(format!("cannot set up HTTP: {e}")))?;
        Ok(Self {
            http,
            base,
            url: url.to_owned(),
            token: token.filter(|t| !t.is_empty()),
            timeout,
        })
    }

    /// This client, waiting long enough for a host that drains sessions for up to `drain`
    /// before it answers (so a long drain does not make the CLI give up first).
    pub fn draining(mut self, drain: Option<Duration>) -> Self {
        if let Some(drain) = drain {
            self.timeout = self.timeout.max(drain + DRAIN_MARGIN);
        }
        self
    }

    /// Sends a request and returns any answer the host gave; only transport problems fail.
    pub async fn call(&self, method: Method, path: &str, body: Option<&Value>) -> Result<Answer, CtlError> {
        let body = body.map(|json| Body {
            bytes: json.to_string().into_bytes(),
            toml: false,
        });
        self.send(method, path, body, None).await
    }

    /// Sends a request with a body read from a file and an `If-Match`; returns any answer the
    /// host gave, only transport problems fail.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Body>,
        if_match: Option<&str>,
    ) -> Result<Answer, CtlError> {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .timeout(self.timeout);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            let kind = if body.toml {
                "application/toml"
            } else {
                "application/json"
            };
            request = request.header(reqwest::header::CONTENT_TYPE, kind).body(body.bytes);
        }
        if let Some(tag) = if_match {
            request = request.header(reqwest::header::IF_MATCH, tag);
        }
        let response = request.send().await.map_err(|e| self.transport(e))?;
        let status = response.status();
        let etag = response
            .headers()
            .get(reqwest::header::ETAG)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let bytes = response.bytes().await.map_err(|e| self.transport(e))?;
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or(Value::Null)
        };
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            return Err(self.refusal(status, &body));
        }
        Ok(Answer { status, body, etag })
    }

    /// Sends a request; any non-2xx answer is a failure carrying the host's message.
    pub async fn ok(&self, method: Method, path: &str, body: Option<&Value>) -> Result<Value, CtlError> {
        Ok(self.call(method, path, body).await?.success()?.body)
    }

    /// Opens a Server-Sent Events stream (no time limit on it), resuming after `last_event_id`.
    pub async fn stream(&self, path: &str, last_event_id: Option<u64>) -> Result<reqwest::Response, CtlError> {
        let mut request = self.http.get(format!("{}{path}", self.base));
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id.to_string());
        }
        let response = tokio::time::timeout(self.timeout, request.send())
            .await
            .map_err(|_| CtlError::Failed(format!("no answer from {} in time (raise --timeout)", self.url)))?
            .map_err(|e| self.transport(e))?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status();
        let body = response.json().await.unwrap_or(Value::Null);
        Err(self.refusal(status, &body))
    }

    /// The failure of a non-2xx answer.
    fn refusal(&self, status: StatusCode, body: &Value) -> CtlError {
        let message = message(body, status);
        let url = self.url.clone();
        match status {
            StatusCode::UNAUTHORIZED => CtlError::Unauthorized { url, message },
            StatusCode::FORBIDDEN => CtlError::Forbidden { url, message },
            _ => CtlError::Failed(message),
        }
    }

    /// `GET` that must succeed: the answer as it came (for `--output json`) and read as `T`.
    pub async fn read<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<(Value, T), CtlError> {
        let json = self.ok(Method::GET, path, None).await?;
        let typed = decode(json.clone())?;
        Ok((json, typed))
    }

    /// A request that must succeed, its answer read as `T`.
    pub async fn typed<T: serde::de::DeserializeOwned>(&self, method: Method, path: &str) -> Result<T, CtlError> {
        let body = self.ok(method, path, None).await?;
        decode(body)
    }

    fn transport(&self, e: reqwest::Error) -> CtlError {
        if e.is_timeout() {
            return CtlError::Failed(format!("no answer from {} in time (raise --timeout)", self.url));
        }
        let mut cause = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(inner) = source {
            cause = inner.to_string();
            source = inner.source();
        }
        CtlError::Unreachable {
            url: self.url.clone(),
            cause,
        }
    }
}

/// Encodes a path segment (server names are safe; session ids and keys may not be).
pub fn segment(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The query string (`?a=1&b=2`) of the parameters given, empty when none is.
pub fn query(params: impl IntoIterator<Item = Option<String>>) -> String {
    let params: Vec<String> = params.into_iter().flatten().collect();
    match params.is_empty() {
        true => String::new(),
        false => format!("?{}", params.join("&")),
    }
}

/// The `timeout=DUR` parameter of a drain's bound.
pub fn drain(timeout: Option<Duration>) -> Option<String> {
    timeout.map(|t| format!("timeout={}", supersocket_proto::format_duration(t)))
}

/// An answer read as `T`; a host that answers something else fails with what it lacked.
pub fn decode<T: serde::de::DeserializeOwned>(body: Value) -> Result<T, CtlError> {
    serde_json::from_value(body).map_err(|e| CtlError::Failed(format!("unexpected answer from the host: {e}")))
}

/// The host's error message (with every detail), or the status.
fn message(body: &Value, status: StatusCode) -> String {
    let Ok(ErrorBody { error }) = ErrorBody::deserialize(body) else {
        return format!("the host answered {status}");
    };
    let mut text = error.message;
    for detail in error.details {
        text.push_str("; ");
        text.push_str(&detail);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_query_holds_the_parameters_given() {
        assert_eq!(query([None, None]), "");
        assert_eq!(query([drain(Some(Duration::from_millis(1500)))]), "?timeout=1500ms");
        let both = [drain(Some(Duration::from_secs(2))), Some("save=true".into())];
        assert_eq!(query(both), "?timeout=2s&save=true");
    }
}
