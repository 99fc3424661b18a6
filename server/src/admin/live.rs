//! The admin API's live view (SPEC §11): `GET /api/v1/events`, a Server-Sent Events stream of
//! the host's journal; `GET /api/v1/servers/{name}/history`; and
//! `GET /api/v1/servers/{name}/logs`, the instance's recent log lines, or (`follow`) a stream
//! of them.
//!
//! A new events client first gets the state of every instance (events without an id), then
//! every event from then on. One that reconnects with `Last-Event-ID` gets what it missed while
//! that is still in the journal; one that falls behind the journal (it reads too slowly, or
//! reconnects too late) gets an `error` event saying so, and the stream ends: the host never
//! waits for an event client. Log followers are served the same way.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use supersocket_proto::{ErrorBody, ErrorCode, HistorySample, LogLine, StateEvent, StreamError, parse_duration};
use utoipa::IntoParams;

use super::AdminState;
use super::error::ApiError;
use crate::events::logs::{LINES, Logged, logs};
use crate::events::{self, Behind, Item, Journal};

/// A comment line this often keeps proxies and clients from timing the stream out.
const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// Lines `logs` answers when `lines` is not given.
const DEFAULT_LINES: usize = 100;

/// Streams open now.
static STREAMS: AtomicUsize = AtomicUsize::new(0);

/// `GET /api/v1/events`.
#[utoipa::path(get, path = "/api/v1/events", tag = "live",
    params(("Last-Event-ID" = Option<String>, Header, description = "Resume after this event id (the last a reconnecting client saw); an id this host never gave, or not a number, starts afresh.")),
    responses(
        (status = 200, description = "Server-Sent Events without end: `state` (`StateEvent`; first one per server without an id), `stats` once a second (`StatsEvent`), `config` after each accepted change (`ConfigEvent`), and `error` (`StreamError`, then the end) for a client that fell behind.",
            body = super::openapi::LiveEvent, content_type = "text/event-stream"),
        (status = 503, description = "Too many event and log streams are open.", body = ErrorBody),
    ))]
pub async fn events(State(state): State<AdminState>, headers: HeaderMap) -> Result<Response, ApiError> {
    let seat = Seat::take(state.host.max_streams())?;
    let live = state.host.live();
    let mut first = VecDeque::new();
    // An id this journal never gave comes from before the host restarted: start afresh.
    let resumed = last_event_id(&headers).filter(|id| *id <= live.journal.last_id());
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
    let journal = Arc::new(JournalOf(live));
    let reader = Reader::new(&state, &headers, seat);
    Ok(follow(journal, cursor, first, reader, |entry: &events::Event| {
        Event::default().event(entry.kind).data(&*entry.data)
    }))
}

/// The host's live journal, held through the `Live` that owns it.
struct JournalOf(Arc<events::Live>);

impl AsRef<Journal<events::Event>> for JournalOf {
    fn as_ref(&self) -> &Journal<events::Event> {
        &self.0.journal
    }
}

/// `Last-Event-ID`, when it is a number.
fn last_event_id(headers: &HeaderMap) -> Option<u64> {
    headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
}

/// `GET /api/v1/servers/{name}/history`: the last ten minutes of its counters, a sample a
/// second, oldest first.
#[utoipa::path(get, path = "/api/v1/servers/{name}/history", tag = "live",
    params(("name" = String, Path, description = "The server.", example = "EchoServerA")),
    responses(
        (status = 200, description = "Up to 600 per-second samples, oldest first.", body = Vec<HistorySample>),
        (status = 404, description = "No such server.", body = ErrorBody),
    ))]
pub async fn history(
    State(state): State<AdminState>,
    Path(name): Path<String>,
) -> Result<Json<Vec<HistorySample>>, ApiError> {
    state.host.instance(&name).ok_or_else(|| ApiError::no_server(&name))?;
    Ok(Json(state.host.live().history.of(&name)))
}

/// The query of `logs`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LogsQuery {
    /// The newest lines to give (100 when not given, at most 1,000).
    #[param(value_type = Option<u64>, format = "uint64", minimum = 0)]
    lines: Option<usize>,
    /// Only lines no older than this (`30s`, `10m`).
    since: Option<String>,
    /// Present (any value but `false`): stream the lines, then every new one, as `log` events.
    follow: Option<String>,
}

/// `GET /api/v1/servers/{name}/logs?lines=N[&since=DUR][&follow]`.
#[utoipa::path(get, path = "/api/v1/servers/{name}/logs", tag = "live",
    params(("name" = String, Path, description = "The server.", example = "EchoServerA"), LogsQuery,
        ("Last-Event-ID" = Option<String>, Header, description = "With `follow`: resume after this line's id; an id this host never gave, or not a number, starts afresh.")),
    responses(
        (status = 200, description = "The newest lines, oldest first; with `follow`, Server-Sent Events without end, a `log` event (`LogLine`) per line.",
            content((Vec<LogLine> = "application/json"), (super::openapi::LogEvent = "text/event-stream"))),
        (status = 404, description = "No such server.", body = ErrorBody),
        (status = 503, description = "With `follow`: too many event and log streams are open.", body = ErrorBody),
    ))]
pub async fn logs_of(
    State(state): State<AdminState>,
    Path(name): Path<String>,
    Query(query): Query<LogsQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    state.host.instance(&name).ok_or_else(|| ApiError::no_server(&name))?;
    let since = match &query.since {
        Some(text) => {
            let age = parse_duration(text).map_err(|e| ApiError::bad_request(format!("since: {e}")))?;
            Some(SystemTime::now().checked_sub(age).unwrap_or(SystemTime::UNIX_EPOCH))
        }
        None => None,
    };
    let wanted = query.lines.unwrap_or(DEFAULT_LINES).min(LINES);
    let journal = logs().of(&name);
    let recent: Vec<_> = journal
        .last(wanted)
        .into_iter()
        .filter(|entry| since.is_none_or(|since| entry.item.at >= since))
        .collect();
    if query.follow.as_deref().is_none_or(|f| f == "false") {
        let lines: Vec<LogLine> = recent.iter().map(|entry| (*entry.item.line).clone()).collect();
        return Ok(Json(lines).into_response());
    }
    let seat = Seat::take(state.host.max_streams())?;
    let resumed = last_event_id(&headers).filter(|id| *id <= journal.last_id());
    let (cursor, first) = match resumed {
        Some(id) => (id, VecDeque::new()),
        None => {
            let cursor = recent.last().map_or_else(|| journal.last_id(), |entry| entry.id);
            (cursor, recent.iter().map(log_event).collect())
        }
    };
    let reader = Reader::new(&state, &headers, seat);
    Ok(follow(journal, cursor, first, reader, |logged: &Logged| {
        log_event_data(logged)
    }))
}

fn log_event(entry: &events::Entry<Logged>) -> Event {
    log_event_data(&entry.item).id(entry.id.to_string())
}

fn log_event_data(logged: &Logged) -> Event {
    let data = serde_json::to_string(&*logged.line).unwrap_or_default();
    Event::default().event("log").data(data)
}

/// A place among the open streams (at most `max`, as each holds an admin connection for as
/// long as it runs, and the admin port must keep room for everything else), given back when
/// the stream ends.
struct Seat;

impl Seat {
    fn take(max: usize) -> Result<Self, ApiError> {
        let taken = STREAMS.fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| {
            (open < max).then_some(open + 1)
        });
        match taken {
            Ok(_) => Ok(Self),
            Err(_) => Err(ApiError::new(
                ErrorCode::Unavailable,
                format!("{max} event and log streams are open already; close one first"),
            )),
        }
    }
}

impl Drop for Seat {
    fn drop(&mut self) {
        STREAMS.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Who follows a stream: its place among the streams, and how to tell that its token still
/// opens the API (a reload may revoke it).
struct Reader {
    _seat: Seat,
    state: AdminState,
    /// The request's `Authorization`, checked again before each batch of events.
    authorization: HeaderMap,
}

impl Reader {
    fn new(state: &AdminState, headers: &HeaderMap, seat: Seat) -> Self {
        let mut authorization = HeaderMap::new();
        if let Some(value) = headers.get(axum::http::header::AUTHORIZATION) {
            authorization.insert(axum::http::header::AUTHORIZATION, value.clone());
        }
        Self {
            _seat: seat,
            state: state.clone(),
            authorization,
        }
    }

    fn still_allowed(&self) -> bool {
        super::guard::authorized(&self.state, &self.authorization).is_ok()
    }
}

/// The stream of `first`, then every item of `journal` after `cursor`, each made an event by
/// `event` (with its id); an `error` event ends it when the reader falls behind or its token
/// no longer opens the API.
fn follow<T, J>(
    journal: Arc<J>,
    cursor: u64,
    first: VecDeque<Event>,
    reader: Reader,
    event: fn(&T) -> Event,
) -> Response
where
    T: Item + Send + Sync + 'static,
    J: AsRef<Journal<T>> + Send + Sync + 'static,
{
    let reader = Follow {
        journal,
        cursor,
        pending: first,
        ended: false,
        event,
        reader,
    };
    let stream = futures_util::stream::unfold(reader, Follow::next);
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
        .into_response()
}

/// One reader's place in a journal.
struct Follow<T, J> {
    journal: Arc<J>,
    /// The id of the last item sent.
    cursor: u64,
    /// Events read and not sent yet.
    pending: VecDeque<Event>,
    ended: bool,
    event: fn(&T) -> Event,
    reader: Reader,
}

impl<T: Item, J: AsRef<Journal<T>>> Follow<T, J> {
    async fn next(mut self) -> Option<(Result<Event, Infallible>, Self)> {
        if let Some(event) = self.pending.pop_front() {
            return Some((Ok(event), self));
        }
        if self.ended {
            return None;
        }
        match (*self.journal).as_ref().next_after(self.cursor).await {
            Ok(entries) if entries.is_empty() => None,
            Ok(_) if !self.reader.still_allowed() => {
                self.ended = true;
                let data = serde_json::json!({ "reason": "the token of this stream no longer opens the API" });
                Some((Ok(Event::default().event("error").data(data.to_string())), self))
            }
            Ok(entries) => {
                for entry in entries {
                    self.cursor = entry.id;
                    let event = (self.event)(&entry.item).id(entry.id.to_string());
                    self.pending.push_back(event);
                }
                let event = self.pending.pop_front()?;
                Some((Ok(event), self))
            }
            Err(Behind { oldest }) => {
                self.ended = true;
                let reason = format!(
                    "fell behind: what came after {} was dropped (the oldest kept is {oldest}); reconnect without Last-Event-ID",
                    self.cursor
                );
                let data = serde_json::to_string(&StreamError { reason }).unwrap_or_default();
                Some((Ok(Event::default().event("error").data(data)), self))
            }
        }
    }
}
