//! Every admin request is answered within a bound: its drain bound (`?timeout=`, else the
//! config's `shutdown_timeout`) and a minute more, for the operations that drain sessions, and
//! a minute for anything else. Past it the client gets 503 `unavailable`; an operation under
//! way runs on to its end (start, stop and restart never stop halfway) and a `GET` shows how
//! it ended. The event and log streams are not bounded: they are meant to last.

use std::time::Duration;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use supersocket_proto::{ErrorCode, parse_duration};

use super::AdminState;
use super::error::ApiError;

/// What a request may take beyond the drain it asks for.
const MARGIN: Duration = Duration::from_secs(60);

/// Answers 503 when the handler has not answered within the request's bound.
pub async fn bounded(State(state): State<AdminState>, request: Request, next: Next) -> Response {
    let drain = asked_drain(request.uri().query()).unwrap_or_else(|| state.host.shutdown_timeout());
    let bound = drain.saturating_add(MARGIN);
    match tokio::time::timeout(bound, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::new(
            ErrorCode::Unavailable,
            format!("no answer within {bound:?}; what was asked goes on, and GET shows how it ends"),
        )
        .into_response(),
    }
}

/// The `timeout=` of a query, when it is a duration.
fn asked_drain(query: Option<&str>) -> Option<Duration> {
    query?
        .split('&')
        .find_map(|pair| pair.strip_prefix("timeout="))
        .and_then(|text| parse_duration(text).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_drain_asked_for_is_read_from_the_query() {
        assert_eq!(asked_drain(Some("save=true&timeout=2s")), Some(Duration::from_secs(2)));
        assert_eq!(asked_drain(Some("timeout=nonsense")), None);
        assert_eq!(asked_drain(None), None);
    }
}
