//! The live view's events as clients see them: N clients follow `GET /api/v1/events`, every
//! frame is checked (JSON, ids one after the other, the number of servers), and each `stats`
//! frame is timed from the sample it describes (its `at`) to the moment it is read; optionally,
//! the CPU a process (the host) used meanwhile.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use serde_json::Value;

use crate::common::{IO_TIMEOUT, new_histogram};

/// Errors told on stderr, per client; the rest are only counted.
const SHOWN_ERRORS: usize = 3;
/// Clock ticks a second when the system does not say (`USER_HZ` on every Linux port but Alpha).
const ASSUMED_TICKS_PER_SECOND: u64 = 100;

/// What [`follow`] does.
pub struct Plan {
    /// Event streams to open (0: none, only the CPU is measured).
    pub clients: usize,
    /// Entries every `stats` frame must have, if given.
    pub servers: Option<usize>,
    /// The process whose CPU use over the run is reported.
    pub cpu_pid: Option<u32>,
}

/// Opens `plan.clients` event streams on `admin`, reads them for `duration`, and reports the
/// `stats` frames read, their delay percentiles, the malformed or lost frames, and the CPU of
/// `plan.cpu_pid` over the run.
pub async fn follow(admin: &str, plan: &Plan, duration: Duration) -> Result<String, String> {
    let url = format!("{admin}/api/v1/events");
    let http = reqwest::Client::builder()
        .connect_timeout(IO_TIMEOUT)
        .build()
        .map_err(|e| e.to_string())?;
    let mut streams = Vec::with_capacity(plan.clients);
    for _ in 0..plan.clients {
        streams.push(open(&http, &url).await?);
    }
    let cpu_before = plan.cpu_pid.map(cpu_ticks).transpose()?;
    let began = Instant::now();
    let deadline = tokio::time::Instant::now() + duration;
    let readers: Vec<_> = streams
        .into_iter()
        .map(|response| tokio::spawn(read(response, deadline, plan.servers)))
        .collect();
    // Nothing else to do meanwhile: with no client, this is the whole run.
    tokio::time::sleep_until(deadline).await;
    let mut clients = Vec::with_capacity(readers.len());
    for reader in readers {
        clients.push(reader.await.map_err(|e| format!("a reader panicked: {e}"))?);
    }
    let cpu = match (plan.cpu_pid, cpu_before) {
        (Some(pid), Some(before)) => Some((cpu_ticks(pid)? - before, began.elapsed())),
        _ => None,
    };
    let expected = duration.as_secs().saturating_sub(1);
    let mut delays = new_histogram();
    let mut errors = 0;
    for (n, client) in clients.iter_mut().enumerate() {
        if client.frames < expected {
            client.fail(format!(
                "{} stats frames in {duration:?}, fewer than {expected}",
                client.frames
            ));
        }
        for said in &client.said {
            eprintln!("loadgen: events client {n}: {said}");
        }
        errors += client.errors;
        delays.add(&client.delays).map_err(|e| e.to_string())?;
    }
    let frames: u64 = clients.iter().map(|c| c.frames).sum();
    let frames_min = clients.iter().map(|c| c.frames).min().unwrap_or(0);
    let ms = |micros: u64| micros as f64 / 1000.0;
    let mut report = format!(
        r#"{{"mode":"events","clients":{},"frames":{frames},"frames_per_client_min":{frames_min},"p50_ms":{:.2},"p99_ms":{:.2},"max_ms":{:.2},"errors":{errors}"#,
        plan.clients,
        ms(delays.value_at_quantile(0.5)),
        ms(delays.value_at_quantile(0.99)),
        ms(delays.max()),
    );
    if let Some((ticks, wall)) = cpu {
        let per_second = ticks_per_second();
        let percent = ticks as f64 / per_second as f64 / wall.as_secs_f64() * 100.0;
        report += &format!(
            r#","cpu_percent":{percent:.2},"cpu_seconds":{:.2},"clock_ticks_per_s":{per_second}"#,
            wall.as_secs_f64()
        );
    }
    report.push('}');
    Ok(report)
}

/// One event stream, once its head says it is one.
async fn open(http: &reqwest::Client, url: &str) -> Result<reqwest::Response, String> {
    let response = tokio::time::timeout(IO_TIMEOUT, http.get(url).send())
        .await
        .map_err(|_| format!("{url}: no answer in {IO_TIMEOUT:?}"))?
        .map_err(|e| format!("{url}: {e}"))?;
    let kind = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    if !response.status().is_success() || !kind.starts_with("text/event-stream") {
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        return Err(format!("{url}: {status} ({kind}): {body}"));
    }
    Ok(response)
}

/// Reads one stream until `deadline`, checking every frame.
async fn read(mut response: reqwest::Response, deadline: tokio::time::Instant, servers: Option<usize>) -> Client {
    let mut parser = Parser::default();
    let mut client = Client::new(servers);
    loop {
        let chunk = match tokio::time::timeout_at(deadline, response.chunk()).await {
            Err(_) => break,
            Ok(Ok(Some(chunk))) => chunk,
            Ok(Ok(None)) => {
                client.fail("the stream ended".into());
                break;
            }
            Ok(Err(e)) => {
                client.fail(format!("reading the stream: {e}"));
                break;
            }
        };
        let read_at = SystemTime::now();
        for frame in parser.feed(&chunk) {
            client.check(&frame, read_at);
        }
    }
    client
}

/// What one client read.
struct Client {
    /// Entries every `stats` frame must have, if known.
    servers: Option<usize>,
    /// Well-formed `stats` frames.
    frames: u64,
    /// From each `stats` frame's `at` to the moment it was read, in µs.
    delays: Histogram<u64>,
    /// Malformed or lost frames, and a stream that failed.
    errors: u64,
    /// The first errors, to tell.
    said: Vec<String>,
    /// The id of the last event that had one.
    last_id: Option<u64>,
    /// The `at` of the last `stats` frame.
    last_at: Option<SystemTime>,
}

impl Client {
    fn new(servers: Option<usize>) -> Self {
        Self {
            servers,
            frames: 0,
            delays: new_histogram(),
            errors: 0,
            said: Vec::new(),
            last_id: None,
            last_at: None,
        }
    }

    fn fail(&mut self, why: String) {
        self.errors += 1;
        if self.said.len() < SHOWN_ERRORS {
            self.said.push(why);
        }
    }

    /// Checks a frame; times it if it is `stats`.
    fn check(&mut self, frame: &Frame, read_at: SystemTime) {
        // Only the state of each server told on connecting comes without an id; every event
        // after it has the next id of the journal, or one was lost.
        match (&frame.id, self.last_id) {
            (Some(text), last) => match text.parse::<u64>() {
                Ok(id) if last.is_none_or(|last| id == last + 1) => self.last_id = Some(id),
                Ok(id) => {
                    self.fail(format!("event {id} after event {}", last.unwrap_or(0)));
                    self.last_id = Some(id);
                }
                Err(_) => self.fail(format!("an id that is not a number: {text:?}")),
            },
            (None, Some(last)) => self.fail(format!("a {} event without an id after event {last}", frame.event)),
            (None, None) => {}
        }
        let data: Value = match serde_json::from_slice(&frame.data) {
            Ok(data) => data,
            Err(e) => {
                return self.fail(format!(
                    "{} data is not JSON ({e}): {}",
                    frame.event,
                    String::from_utf8_lossy(&frame.data)
                ));
            }
        };
        match frame.event.as_str() {
            "stats" => match self.stats(&data) {
                Ok(at) => {
                    let delay = read_at.duration_since(at).unwrap_or_default();
                    let micros = u64::try_from(delay.as_micros()).unwrap_or(u64::MAX).max(1);
                    self.delays.saturating_record(micros);
                    self.frames += 1;
                }
                Err(why) => self.fail(format!("stats: {why}: {data}")),
            },
            "state" if data["name"].is_string() && data["state"].is_string() => {}
            "config" if data.is_object() => {}
            "error" => self.fail(format!("the host ended the stream: {data}")),
            other => self.fail(format!("an unexpected {other} event: {data}")),
        }
    }

    /// The `at` of a well-formed `stats` frame, later than the last one's.
    fn stats(&mut self, data: &Value) -> Result<SystemTime, String> {
        let at = data["at"].as_str().and_then(parse_rfc3339).ok_or("no RFC 3339 `at`")?;
        let servers = data["servers"].as_array().ok_or("no `servers` array")?;
        let counted = ["sessions", "bytes_in", "bytes_out", "packages"];
        for server in servers {
            if !server["name"].is_string() || counted.iter().any(|c| !server[c].is_u64()) {
                return Err(format!("a malformed server {server}"));
            }
        }
        if let Some(expected) = self.servers
            && servers.len() != expected
        {
            return Err(format!("{} servers, not {expected}", servers.len()));
        }
        if self.last_at.is_some_and(|last| at <= last) {
            return Err("not later than the frame before".into());
        }
        self.last_at = Some(at);
        Ok(at)
    }
}

/// One Server-Sent Event.
#[derive(Debug, PartialEq)]
struct Frame {
    /// Its `event:` (`message` when it has none).
    event: String,
    /// Its `data:` lines, joined by newlines.
    data: Vec<u8>,
    /// Its own `id:`, if it has one.
    id: Option<String>,
}

/// Cuts a stream of bytes into events (the WHATWG `text/event-stream` format: fields on lines
/// ending in LF or CRLF, comments starting with `:`, an empty line ending an event).
#[derive(Default)]
struct Parser {
    /// Bytes of a line not ended yet.
    pending: Vec<u8>,
    event: Option<String>,
    data: Option<Vec<u8>>,
    id: Option<String>,
}

impl Parser {
    /// The events that `bytes` completes.
    fn feed(&mut self, bytes: &[u8]) -> Vec<Frame> {
        self.pending.extend_from_slice(bytes);
        let mut frames = Vec::new();
        let mut start = 0;
        while let Some(length) = self.pending[start..].iter().position(|&b| b == b'\n') {
            let end = start + length;
            let line = self.pending[start..end]
                .strip_suffix(b"\r")
                .unwrap_or(&self.pending[start..end]);
            let line = line.to_vec();
            start = end + 1;
            if let Some(frame) = self.line(&line) {
                frames.push(frame);
            }
        }
        self.pending.drain(..start);
        frames
    }

    fn line(&mut self, line: &[u8]) -> Option<Frame> {
        if line.is_empty() {
            // An event with no data is not dispatched; its other fields are dropped with it.
            let event = self.event.take();
            let id = self.id.take();
            return self.data.take().map(|data| Frame {
                event: event.unwrap_or_else(|| "message".into()),
                data,
                id,
            });
        }
        if line.starts_with(b":") {
            return None;
        }
        let (field, value) = match line.iter().position(|&b| b == b':') {
            Some(colon) => {
                let value = &line[colon + 1..];
                (&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &[][..]),
        };
        match field {
            b"event" => self.event = Some(String::from_utf8_lossy(value).into_owned()),
            b"id" => self.id = Some(String::from_utf8_lossy(value).into_owned()),
            b"data" => match &mut self.data {
                Some(data) => {
                    data.push(b'\n');
                    data.extend_from_slice(value);
                }
                None => self.data = Some(value.to_vec()),
            },
            _ => {}
        }
        None
    }
}

/// `2026-11-21T12:00:00.123Z` (any fraction of a second, `Z` or an offset `+01:00`) as a time
/// no earlier than 1970.
fn parse_rfc3339(text: &str) -> Option<SystemTime> {
    let b = text.as_bytes();
    let shape = b.len() >= 20
        && b[4] == b'-'
        && b[7] == b'-'
        && matches!(b[10], b'T' | b't' | b' ')
        && b[13] == b':'
        && b[16] == b':';
    if !shape {
        return None;
    }
    let number = |from: usize, to: usize| -> Option<i64> {
        let digits = &b[from..to];
        digits
            .iter()
            .all(u8::is_ascii_digit)
            .then(|| digits.iter().fold(0i64, |n, d| n * 10 + i64::from(d - b'0')))
    };
    let (year, month, day) = (number(0, 4)?, number(5, 7)?, number(8, 10)?);
    let (hour, minute, second) = (number(11, 13)?, number(14, 16)?, number(17, 19)?);
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return None;
    }
    // A leap second (:60) is taken as the last moment of :59.
    if hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let mut rest = &b[19..];
    let mut nanos = 0u32;
    if let Some(fraction) = rest.strip_prefix(b".") {
        let digits = fraction.iter().take_while(|d| d.is_ascii_digit()).count();
        if digits == 0 {
            return None;
        }
        let mut scale = 100_000_000;
        for d in &fraction[..digits.min(9)] {
            nanos += u32::from(d - b'0') * scale;
            scale /= 10;
        }
        rest = &fraction[digits..];
    }
    let offset = match rest {
        b"Z" | b"z" => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let two = |a: u8, b: u8| {
                (a.is_ascii_digit() && b.is_ascii_digit()).then(|| i64::from((a - b'0') * 10 + (b - b'0')))
            };
            let (hours, minutes) = (two(*h1, *h2)?, two(*m1, *m2)?);
            if hours > 23 || minutes > 59 {
                return None;
            }
            let seconds = hours * 3600 + minutes * 60;
            if *sign == b'+' { seconds } else { -seconds }
        }
        _ => return None,
    };
    let (second, nanos) = if second == 60 {
        (59, 999_999_999)
    } else {
        (second, nanos)
    };
    let seconds = days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second - offset;
    Some(UNIX_EPOCH + Duration::new(u64::try_from(seconds).ok()?, nanos))
}

fn days_in_month(year: i64, month: i64) -> i64 {
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    match month {
        2 if leap => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days from 1970-01-01 to a date of the proleptic Gregorian calendar (H. Hinnant's
/// `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let day_of_year = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// The CPU time (user and system, all threads) `pid` has used, in clock ticks.
fn cpu_ticks(pid: u32) -> Result<u64, String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).map_err(|e| format!("process {pid}: {e}"))?;
    // The fields after the command name, which may hold spaces: `[11]` is utime (field 14),
    // `[12]` stime.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| fields.get(i).and_then(|t| t.parse::<u64>().ok());
    match (ticks(11), ticks(12)) {
        (Some(user), Some(system)) => Ok(user + system),
        _ => Err(format!("no CPU times in /proc/{pid}/stat")),
    }
}

/// The clock ticks in a second of /proc's CPU times.
fn ticks_per_second() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .and_then(|t| u64::try_from(t).ok())
        .filter(|t| *t > 0)
        .unwrap_or(ASSUMED_TICKS_PER_SECOND)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_times_are_read() {
        let at = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        assert_eq!(parse_rfc3339("2023-11-14T22:13:20.123Z"), Some(at));
        assert_eq!(parse_rfc3339("2023-11-14T23:13:20.123+01:00"), Some(at));
        assert_eq!(parse_rfc3339("2023-11-14T21:43:20.123-00:30"), Some(at));
        assert_eq!(
            parse_rfc3339("1970-01-01T00:00:00Z"),
            Some(UNIX_EPOCH),
            "the fraction may be left out"
        );
        assert_eq!(
            parse_rfc3339("2024-02-29T00:00:00.000000001Z"),
            Some(UNIX_EPOCH + Duration::new(1_709_164_800, 1))
        );
        for wrong in [
            "",
            "2023-11-14 22:13:20",
            "2023-11-14T22:13:20.Z",
            "2023-02-29T00:00:00Z",
            "2023-11-14T24:00:00Z",
            "2023-11-14T22:13:20.123",
            "2023-11-14T22:13:20+1:00",
            "1969-12-31T23:59:59Z",
            "+023-11-14T22:13:20Z",
        ] {
            assert_eq!(parse_rfc3339(wrong), None, "{wrong:?}");
        }
    }

    #[test]
    fn events_are_cut_from_chunks_split_anywhere() {
        let stream = b": keep-alive\n\nevent: state\ndata: {\"a\":1}\n\nevent: stats\r\nid: 7\r\ndata: x\r\ndata:y\r\n\r\ndata: z\n\n";
        for split in 0..stream.len() {
            let mut parser = Parser::default();
            let mut frames = parser.feed(&stream[..split]);
            frames.extend(parser.feed(&stream[split..]));
            assert_eq!(
                frames,
                [
                    Frame {
                        event: "state".into(),
                        data: b"{\"a\":1}".to_vec(),
                        id: None
                    },
                    Frame {
                        event: "stats".into(),
                        data: b"x\ny".to_vec(),
                        id: Some("7".into())
                    },
                    Frame {
                        event: "message".into(),
                        data: b"z".to_vec(),
                        id: None
                    },
                ],
                "split at {split}"
            );
        }
    }

    fn stats(id: u64, at: &str, servers: usize) -> Frame {
        let server = r#"{"name":"Echo1","sessions":0,"bytes_in":0,"bytes_out":0,"packages":0}"#;
        let servers = vec![server; servers].join(",");
        Frame {
            event: "stats".into(),
            data: format!(r#"{{"at":"{at}","servers":[{servers}]}}"#).into_bytes(),
            id: Some(id.to_string()),
        }
    }

    #[test]
    fn stats_frames_are_timed_and_bad_or_missing_ones_counted() {
        let mut client = Client::new(Some(2));
        let read_at = UNIX_EPOCH + Duration::from_millis(1_700_000_000_623);
        let state = Frame {
            event: "state".into(),
            data: br#"{"name":"Echo1","state":"running","last_error":null}"#.to_vec(),
            id: None,
        };
        client.check(&state, read_at);
        client.check(&stats(4, "2023-11-14T22:13:20.123Z", 2), read_at);
        assert_eq!((client.frames, client.errors), (1, 0));
        assert_eq!(client.delays.max(), client.delays.highest_equivalent(500_000));

        client.check(&stats(6, "2023-11-14T22:13:21.123Z", 2), read_at);
        assert_eq!((client.frames, client.errors), (2, 1), "event 5 was lost");
        client.check(&stats(7, "2023-11-14T22:13:22.123Z", 1), read_at);
        client.check(&stats(8, "2023-11-14T22:13:21.123Z", 2), read_at);
        client.check(&state, read_at);
        let broken = Frame {
            event: "stats".into(),
            data: b"{\"at\":".to_vec(),
            id: Some("9".into()),
        };
        client.check(&broken, read_at);
        assert_eq!(client.frames, 2);
        assert_eq!(client.errors, 5, "{:?}", client.said);
    }
}
