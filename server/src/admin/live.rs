//! The admin API's live view (SPEC §11): `GET /api/v1/events`, a Server-Sent Events stream of
//! the host's journal, and `GET /api/v1/servers/{name}/history`.
//!
//! A new client first gets the state of every instance (events without an id), then every
//! event from then on. One that reconnects with `Last-Event-ID` gets what it missed while that
//! is still in the journal; one that falls behind the journal (it reads too slowly, or
//! reconnects too late) gets an `error` event saying so, and the stream ends: the host never
//! waits for an event client.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use supersocket_proto::{HistorySample, StateEvent};

use super::AdminState;
use super::error::ApiError;
use crate::events::{Behind, Live};

/// A comment line this often keeps proxies and clients from timing the stream out.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// `GET /api/v1/events`.
pub async fn events(
    State(state): State<AdminState>,
    headers: HeaderMap,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let live = state.host.live();
    let resumed = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let mut first = VecDeque::new();
    let cursor = match resumed {
        Some(id) => id,
        None => {
            for instance in state.host.instances() {
                let info = instance.info();
                let event = StateEvent {
                    name: info.name,
                    state: info.state,
                    last_error: info.last_error,
                };
                if let Ok(json) = serde_json::to_string(&event) {
                    first.push_back(Event::default().event("state").data(json));
                }
            }
            live.journal.last_id()
        }
    };
    let stream = futures_util::stream::unfold(
        Follow {
            live,
            cursor,
            pending: first,
            ended: false,
        },
        Follow::next,
    );
    Sse::new(stream).keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
}

/// One client's place in the journal.
struct Follow {
    live: Arc<Live>,
    /// The id of the last event sent.
    cursor: u64,
    /// Events read from the journal and not sent yet.
    pending: VecDeque<Event>,
    ended: bool,
}

impl Follow {
    async fn next(mut self) -> Option<(Result<Event, Infallible>, Self)> {
        if let Some(event) = self.pending.pop_front() {
            return Some((Ok(event), self));
        }
        if self.ended {
            return None;
        }
        match self.live.journal.next_after(self.cursor).await {
            Ok(entries) => {
                for entry in entries {
                    self.cursor = entry.id;
                    let event = Event::default()
                        .id(entry.id.to_string())
                        .event(entry.kind)
                        .data(&*entry.data);
                    self.pending.push_back(event);
                }
                let event = self.pending.pop_front()?;
                Some((Ok(event), self))
            }
            Err(Behind { oldest }) => {
                self.ended = true;
                let reason = format!(
                    "{{\"reason\":\"fell behind: events after {} were dropped (the oldest kept is {oldest}); reconnect without Last-Event-ID\"}}",
                    self.cursor
                );
                Some((Ok(Event::default().event("error").data(reason)), self))
            }
        }
    }
}

/// `GET /api/v1/servers/{name}/history`: the last ten minutes of its counters, a sample a
/// second, oldest first.
pub async fn history(
    State(state): State<AdminState>,
    Path(name): Path<String>,
) -> Result<Json<Vec<HistorySample>>, ApiError> {
    state.host.instance(&name).ok_or_else(|| ApiError::no_server(&name))?;
    Ok(Json(state.host.live().history.of(&name)))
}
