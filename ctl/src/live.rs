//! The live commands: `logs` (an instance's recent lines, or `-f` to follow them) and `watch`
//! (a table that redraws in place from the events stream, or appended lines when stdout is not
//! a terminal). Both read the admin API's Server-Sent Events and resume after a broken
//! connection where they left off.

use std::io::IsTerminal;
use std::time::{Duration, Instant, SystemTime};

use supersocket_proto::{ConfigEvent, LogLine, ServerInfo, StateEvent, StatsEvent, StreamError};

use crate::cli::Output;
use crate::client::{Client, CtlError, query, segment};
use crate::render;

/// Longest wait before trying a broken stream again.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Most bytes of one event; a host sending more is not one to follow.
const MAX_EVENT: usize = 1024 * 1024;

/// One Server-Sent Event.
#[derive(Debug, Default, PartialEq)]
struct Event {
    id: Option<u64>,
    kind: String,
    data: String,
}

/// Events read off one response.
struct Events {
    response: reqwest::Response,
    buffer: Vec<u8>,
}

impl Events {
    /// The next event; `None` when the host ended the stream.
    async fn next(&mut self) -> Result<Option<Event>, String> {
        loop {
            if let Some(event) = self.take() {
                return Ok(Some(event));
            }
            if self.buffer.len() > MAX_EVENT {
                return Err(format!("an event over {MAX_EVENT} bytes"));
            }
            match self.response.chunk().await {
                Ok(Some(bytes)) => self.buffer.extend_from_slice(&bytes),
                Ok(None) => return Ok(None),
                Err(e) => return Err(e.to_string()),
            }
        }
    }

    /// The first whole event in the buffer (comments, such as keep-alives, are skipped).
    fn take(&mut self) -> Option<Event> {
        loop {
            let end = self.buffer.windows(2).position(|w| w == b"\n\n")?;
            let block: Vec<u8> = self.buffer.drain(..end + 2).collect();
            if let Some(event) = parse(&String::from_utf8_lossy(&block)) {
                return Some(event);
            }
        }
    }
}

/// An event from its lines (`event:`, `data:`, `id:`); `None` for a block of comments only.
fn parse(block: &str) -> Option<Event> {
    let mut event = Event::default();
    let mut data = Vec::new();
    for line in block.lines() {
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "event" => event.kind = value.to_owned(),
            "data" => data.push(value),
            "id" => event.id = value.parse().ok(),
            _ => {}
        }
    }
    if data.is_empty() && event.kind.is_empty() {
        return None;
    }
    if event.kind.is_empty() {
        event.kind = "message".into();
    }
    event.data = data.join("\n");
    Some(event)
}

/// Follows the stream at `path` until `handle` says it has seen enough (or stdout closes):
/// a connection that breaks is opened again after a pause (growing to [`MAX_BACKOFF`]) with
/// the last id seen; an `error` event from the host ends it with the host's reason.
async fn follow(
    client: &Client,
    path: &str,
    mut handle: impl FnMut(Event) -> Result<bool, CtlError>,
) -> Result<(), CtlError> {
    let mut last_id = None;
    let mut backoff = Duration::from_millis(250);
    loop {
        let mut events = match client.stream(path, last_id).await {
            Ok(response) => Events {
                response,
                buffer: Vec::new(),
            },
            Err(error @ CtlError::Unreachable { .. }) if last_id.is_some() => {
                eprintln!("supersocket: {error}; trying again");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
            Err(error) => return Err(error),
        };
        let broke = loop {
            match events.next().await {
                Ok(Some(event)) if event.kind == "error" => {
                    let reason = serde_json::from_str::<StreamError>(&event.data).map_or(event.data, |e| e.reason);
                    return Err(CtlError::Failed(format!("the host ended the stream: {reason}")));
                }
                Ok(Some(event)) => {
                    backoff = Duration::from_millis(250);
                    last_id = event.id.or(last_id);
                    if !handle(event)? {
                        return Ok(());
                    }
                }
                Ok(None) => break "the host closed the stream".to_owned(),
                Err(e) => break e,
            }
        };
        eprintln!("supersocket: {broke}; resuming");
        last_id = last_id.or(Some(0));
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Writes `text` to stdout; false once stdout is closed (a pager or `head` that quit).
fn emit(text: &str) -> bool {
    crate::stdout::write(text)
}

/// `logs NAME [-n N] [--since DUR] [-f]`.
pub async fn logs(
    client: &Client,
    output: Output,
    name: &str,
    lines: usize,
    since: Option<Duration>,
    follow_on: bool,
) -> Result<(), CtlError> {
    let since = since.map(|d| format!("since={}", supersocket_proto::format_duration(d)));
    let params = [
        Some(format!("lines={lines}")),
        since,
        follow_on.then(|| "follow".to_owned()),
    ];
    let path = format!("/api/v1/servers/{}/logs{}", segment(name), query(params));
    let show = |line: &LogLine| match output {
        Output::Json => serde_json::to_string(line).unwrap_or_default() + "\n",
        Output::Table => format!("{} {:<6} {:<5} {}\n", line.at, line.level, line.source, line.message),
    };
    if !follow_on {
        let lines: Vec<LogLine> = client.typed(reqwest::Method::GET, &path).await?;
        let text: String = lines.iter().map(show).collect();
        emit(&text);
        return Ok(());
    }
    follow(client, &path, |event| {
        if event.kind != "log" {
            return Ok(true);
        }
        let line: LogLine = serde_json::from_str(&event.data)
            .map_err(|e| CtlError::Failed(format!("unexpected log line from the host: {e}")))?;
        Ok(emit(&show(&line)))
    })
    .await
}

/// One instance as `watch` shows it.
struct Watched {
    info: ServerInfo,
    /// Its last counters and when they came, for rates.
    last: Option<(Instant, [u64; 3])>,
    /// Bytes in, bytes out and packages per second.
    rates: [f64; 3],
}

/// `watch [--count N]`: the instances' states, sessions and rates, live.
pub async fn watch(client: &Client, url: &str, count: Option<u64>) -> Result<(), CtlError> {
    let terminal = std::io::stdout().is_terminal();
    let mut watched = fetch(client).await?;
    let mut ticks = 0u64;
    let mut refetch = false;
    if terminal {
        emit(&redraw(url, &watched));
    }
    let follow_result = follow(client, "/api/v1/events", |event| {
        match event.kind.as_str() {
            "state" => {
                let state: StateEvent = decode(&event.data)?;
                match watched.iter_mut().find(|w| w.info.name == state.name) {
                    Some(w) => {
                        w.info.state = state.state;
                        w.info.last_error.clone_from(&state.last_error);
                    }
                    None => refetch = true,
                }
                if !terminal {
                    let error = state.last_error.map(|e| format!(" ({e})")).unwrap_or_default();
                    return Ok(emit(&format!("{} {} {}{error}\n", clock(), state.name, state.state)));
                }
            }
            "stats" => {
                let stats: StatsEvent = decode(&event.data)?;
                let now = Instant::now();
                let mut lines = String::new();
                for s in &stats.servers {
                    let Some(w) = watched.iter_mut().find(|w| w.info.name == s.name) else {
                        refetch = true;
                        continue;
                    };
                    let counters = [s.bytes_in, s.bytes_out, s.packages];
                    if let Some((then, before)) = w.last {
                        let secs = now.duration_since(then).as_secs_f64().max(0.001);
                        for (rate, (n, b)) in w.rates.iter_mut().zip(counters.iter().zip(before)) {
                            *rate = n.saturating_sub(b) as f64 / secs;
                        }
                    }
                    w.last = Some((now, counters));
                    w.info.sessions = s.sessions;
                    w.info.rss_bytes = s.rss_bytes;
                    w.info.cpu_percent = s.cpu_percent;
                    lines.push_str(&format!(
                        "{} {} sessions={} in={}/s out={}/s packages={:.0}/s\n",
                        stats.at.get(11..19).unwrap_or(&stats.at),
                        s.name,
                        s.sessions,
                        render::bytes(w.rates[0] as u64),
                        render::bytes(w.rates[1] as u64),
                        w.rates[2],
                    ));
                }
                ticks += 1;
                if !terminal && !emit(&lines) {
                    return Ok(false);
                }
            }
            "config" => {
                let _: ConfigEvent = decode(&event.data)?;
                refetch = true;
                if !terminal && !emit(&format!("{} config changed\n", clock())) {
                    return Ok(false);
                }
            }
            _ => {}
        }
        if terminal && !emit(&redraw(url, &watched)) {
            return Ok(false);
        }
        Ok(!refetch && count.is_none_or(|count| ticks < count))
    });
    follow_result.await?;
    if refetch && count.is_none_or(|count| ticks < count) {
        // An instance came or went: start over with a fresh list (the stream starts again
        // with every instance's state).
        return Box::pin(watch(client, url, count.map(|count| count - ticks))).await;
    }
    Ok(())
}

/// The instances, as `watch` starts them.
async fn fetch(client: &Client) -> Result<Vec<Watched>, CtlError> {
    let servers: Vec<ServerInfo> = client.typed(reqwest::Method::GET, "/api/v1/servers").await?;
    Ok(servers
        .into_iter()
        .map(|info| Watched {
            info,
            last: None,
            rates: [0.0; 3],
        })
        .collect())
}

fn decode<T: serde::de::DeserializeOwned>(data: &str) -> Result<T, CtlError> {
    serde_json::from_str(data).map_err(|e| CtlError::Failed(format!("unexpected event from the host: {e}")))
}

/// The screen: cursor home, the table, the rest cleared.
fn redraw(url: &str, watched: &[Watched]) -> String {
    let rows = watched.iter().map(|w| render::WatchRow {
        name: w.info.name.clone(),
        state: w.info.state.to_string(),
        sessions: w.info.sessions.to_string(),
        bytes_in: format!("{}/s", render::bytes(w.rates[0] as u64)),
        bytes_out: format!("{}/s", render::bytes(w.rates[1] as u64)),
        packages: format!("{:.0}/s", w.rates[2]),
        mem: w.info.rss_bytes.map_or_else(|| "-".into(), render::bytes),
        cpu: w.info.cpu_percent.map_or_else(|| "-".into(), render::percent),
    });
    let table = render::watch_table(rows).replace('\n', "\x1b[K\n");
    format!("\x1b[H{url}  {} UTC  (Ctrl-C quits)\x1b[K\n\n{table}\x1b[J", clock())
}

/// The time now, `HH:MM:SS` UTC.
fn clock() -> String {
    let secs = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
        % 86_400;
    format!("{:02}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_read_from_their_lines_and_comments_skipped() {
        assert_eq!(
            parse("id: 7\nevent: state\ndata: {\"a\":1}\n\n"),
            Some(Event {
                id: Some(7),
                kind: "state".into(),
                data: "{\"a\":1}".into()
            })
        );
        assert_eq!(parse(": keep-alive\n\n"), None);
        let two_lines = parse("data: a\ndata: b\n\n").unwrap();
        assert_eq!((two_lines.kind.as_str(), two_lines.data.as_str()), ("message", "a\nb"));
    }
}
