//! The pomelo chat cluster: users QUERY the gate, connect to the connector it names, ENTER a
//! room and SAY `u<user>:<seq>` lines, one at a time (a SAY has no reply on success: the
//! sender's own `MSG` is its acknowledgement; an error is an `ERR ...` line). Every member
//! records what arrives; the analysis holds each acknowledged SAY against every member that
//! had entered the room before it was said.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use super::dispatch::parse_label;
use super::ledger::{Outcome, PathReport, Receipt, Receipts, Trouble};
use super::replies::unserved;
use super::world::{Backoff, End, Phase, World};

/// One SAY.
struct Said {
    sent_at: Instant,
    outcome: Outcome,
}

/// One user connection: its uid is `u<label>`.
pub struct UserLog {
    label: u32,
    room: String,
    connector: String,
    /// When the ENTER was answered OK.
    entered_at: Option<Instant>,
    /// When the connection closed (by the host, or by this client giving up on a stall).
    closed_at: Option<Instant>,
    said: Vec<Said>,
    /// The `MSG`s it got.
    receipts: Vec<Receipt>,
}

impl UserLog {
    fn open_at(&self, at: Instant) -> bool {
        self.closed_at.is_none_or(|closed| closed > at)
    }

    /// `u<label> in <room> on <connector>`, for examples.
    fn who(&self, world: &World) -> String {
        format!(
            "u{} in {} on {}",
            self.label,
            self.room,
            world.describe(&self.connector)
        )
    }
}

/// One user slot in `room`: asks the gate, enters, talks; reconnects as a new user whenever
/// its connection ends.
pub async fn user(world: &World, gate: String, room: String, period: Duration) -> (Vec<UserLog>, PathReport) {
    let mut logs = Vec::new();
    let mut report = PathReport::default();
    let mut backoff = Backoff::new();
    while world.running() {
        let label = world.label();
        let (addr, connector) = match find_connector(world, &gate, label).await {
            Ok(found) => found,
            Err(e) => {
                report.tally.connect_failures += 1;
                report.reason(&format!("QUERY: {e}"));
                backoff.wait(world).await;
                continue;
            }
        };
        let Ok(stream) = world.connect_addr(addr).await else {
            report.tally.connect_failures += 1;
            backoff.wait(world).await;
            continue;
        };
        report.tally.connections += 1;
        backoff.reset();
        let mut log = UserLog {
            label,
            room: room.clone(),
            connector,
            entered_at: None,
            closed_at: None,
            said: Vec::new(),
            receipts: Vec::new(),
        };
        let running = world.running();
        let end = talk(world, stream, &mut log, period, &mut report).await;
        if end == End::Closed && running && world.running() {
            report.tally.closed_by_host += 1;
        }
        logs.push(log);
        if end == End::Finish {
            break;
        }
        backoff.wait(world).await;
    }
    (logs, report)
}

/// Asks the gate for the connector of `u<label>`: its address and name.
async fn find_connector(world: &World, gate: &str, label: u32) -> Result<(SocketAddr, String), String> {
    let stream = world.connect(gate).await?;
    let mut stream = BufReader::new(stream);
    stream
        .get_mut()
        .write_all(format!("QUERY u{label}\r\n").as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut answer = String::new();
    match tokio::time::timeout(world.reply_timeout, stream.read_line(&mut answer)).await {
        Ok(Ok(n)) if n > 0 => {}
        _ => return Err("the gate did not answer".into()),
    }
    let addr: SocketAddr = answer
        .trim()
        .parse()
        .map_err(|_| format!("the gate answered {:?}", answer.trim()))?;
    let servers = world.admin.servers().await?;
    let connector = servers
        .iter()
        .find(|s| {
            s["listeners"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|l| l["port"] == addr.port())
        })
        .and_then(|s| s["name"].as_str())
        .unwrap_or("?")
        .to_owned();
    Ok((addr, connector))
}

async fn talk(world: &World, stream: TcpStream, log: &mut UserLog, period: Duration, report: &mut PathReport) -> End {
    let uid = format!("u{}", log.label);
    let (reader, mut writer) = stream.into_split();
    let mut lines = BufReader::new(reader).lines();
    let mut pending: Option<usize> = None;
    let asked_at = Instant::now();
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    if writer
        .write_all(format!("ENTER {uid} {}\r\n", log.room).as_bytes())
        .await
        .is_err()
    {
        return End::Closed;
    }
    let end = loop {
        tokio::select! {
            line = lines.next_line() => {
                let Ok(Some(line)) = line else { break End::Closed };
                if let Some(end) = heard(world, log, &line, &mut pending, report) {
                    break end;
                }
            }
            _ = tick.tick() => {
                if world.phase() == Phase::Finish {
                    break End::Finish;
                }
                let waiting_since = match (log.entered_at, pending) {
                    (None, _) => Some(asked_at),
                    (Some(_), Some(seq)) => Some(log.said[seq].sent_at),
                    (Some(_), None) => None,
                };
                if let Some(since) = waiting_since.filter(|t| t.elapsed() > world.reply_timeout) {
                    let what = if log.entered_at.is_none() { "ENTER" } else { "SAY" };
                    report.examples.add("stalled", || format!(
                        "{what} of {} unanswered from {:.2}s for {:?}; {}",
                        log.who(world), world.secs(since),
                        world.reply_timeout, world.faults_before(since)));
                    break End::Dropped;
                }
                if world.running() && log.entered_at.is_some() && pending.is_none() {
                    let seq = log.said.len();
                    log.said.push(Said { sent_at: Instant::now(), outcome: Outcome::Pending });
                    pending = Some(seq);
                    world.begin(1);
                    let line = format!("SAY {uid}:{seq}\r\n");
                    let written = tokio::time::timeout(world.reply_timeout, writer.write_all(line.as_bytes())).await;
                    if !matches!(written, Ok(Ok(()))) {
                        break End::Closed;
                    }
                }
            }
        }
    };
    if end != End::Finish {
        log.closed_at = Some(Instant::now());
    }
    if end == End::Closed && log.entered_at.is_none() && log.receipts.is_empty() {
        let what = format!("u{} on {} (ENTER)", log.label, world.describe(&log.connector));
        unserved(world, &what, asked_at, report);
    }
    if let Some(seq) = pending {
        log.said[seq].outcome = if end == End::Closed {
            report.reason("closed before the outcome");
            Outcome::Closed
        } else {
            Outcome::Stalled
        };
        world.end(1);
    }
    end
}

/// Handles one line a user got; `Some` ends the connection.
fn heard(
    world: &World,
    log: &mut UserLog,
    line: &str,
    pending: &mut Option<usize>,
    report: &mut PathReport,
) -> Option<End> {
    let now = Instant::now();
    if log.entered_at.is_none() {
        if line.starts_with("OK") {
            log.entered_at = Some(now);
            return None;
        }
        if line.starts_with("ERR") {
            report.reason(&format!("ENTER: {line}"));
            return Some(End::Dropped);
        }
    }
    if let Some(rest) = line.strip_prefix("MSG ") {
        let mut parts = rest.splitn(3, ' ');
        let (room, uid, text) = (parts.next(), parts.next(), parts.next());
        let parsed = parse_label(text.unwrap_or(""), 'u').filter(|(sender, _)| uid == Some(&format!("u{sender}")));
        let Some((sender, seq)) = parsed.filter(|_| room == Some(log.room.as_str())) else {
            report.count(Trouble::Wrong, || {
                format!("{} got {line:?}; {}", log.who(world), world.faults_before(now))
            });
            return None;
        };
        log.receipts.push(Receipt { sender, seq, at: now });
        if sender == log.label && *pending == Some(seq as usize) {
            let said = &mut log.said[seq as usize];
            said.outcome = Outcome::Acked(now);
            if now.duration_since(said.sent_at) > world.slow {
                report.tally.slow += 1;
            }
            *pending = None;
            world.end(1);
        }
        return None;
    }
    if line.starts_with("JOIN ") || line.starts_with("LEAVE ") {
        return None;
    }
    if line.starts_with("ERR")
        && let Some(seq) = pending.take()
    {
        log.said[seq].outcome = Outcome::Refused;
        report.reason(line);
        world.end(1);
        return None;
    }
    // Every SAY of this user has its outcome already. An ERR now contradicts one that came
    // back as a MSG (the host delivered it to some members, then told the sender it failed, as
    // when a chat backend dies with the line on its way to a connector): the SAY is refused,
    // so the other members are owed nothing for it, and it counts as refused yet delivered.
    // Any other line is wrong.
    let last = log.said.iter().rposition(|s| s.outcome.acked());
    let contradicts = line.starts_with("ERR") && last.is_some();
    if let Some(seq) = last.filter(|_| contradicts) {
        log.said[seq].outcome = Outcome::Refused;
    }
    let trouble = if contradicts {
        report.reason(line);
        Trouble::RefusedButDelivered
    } else {
        Trouble::Wrong
    };
    report.count(trouble, || {
        let last = match last {
            Some(seq) if contradicts => format!(
                "after its last SAY, u{}:{seq} said at {:.2}s, had come back to it as a MSG",
                log.label,
                world.secs(log.said[seq].sent_at)
            ),
            _ => "with nothing asked".to_owned(),
        };
        format!(
            "{} got {line:?} {last}; {}",
            log.who(world),
            world.faults_before(log.said.last().map_or(now, |s| s.sent_at))
        )
    });
    None
}

/// Holds every acknowledged SAY against every member that had entered its room before it was
/// said and was still connected then; deliveries after `cut` are late.
pub fn analyse(world: &World, users: &[UserLog], cut: Instant) -> PathReport {
    let mut report = PathReport::default();
    let by_label: HashMap<u32, &UserLog> = users.iter().map(|u| (u.label, u)).collect();
    let mut rooms: HashMap<&str, Vec<&UserLog>> = HashMap::new();
    for u in users.iter().filter(|u| u.entered_at.is_some()) {
        rooms.entry(u.room.as_str()).or_default().push(u);
    }
    let mut seen = Receipts::default();
    for r in users {
        for receipt in &r.receipts {
            let said = by_label
                .get(&receipt.sender)
                .and_then(|s| s.said.get(receipt.seq as usize).map(|m| (*s, m)));
            let Some((s, m)) = said.filter(|(s, _)| s.room == r.room) else {
                report.count(Trouble::Wrong, || {
                    format!(
                        "{} got u{}:{}, which nobody in the room said",
                        r.who(world),
                        receipt.sender,
                        receipt.seq
                    )
                });
                continue;
            };
            seen.note(r.label, receipt, m.outcome, &mut report, |disorder| {
                format!(
                    "u{}:{} of {} ({}) reached u{} ({}) {}; said at {:.2}s, {}",
                    s.label,
                    receipt.seq,
                    s.room,
                    world.describe(&s.connector),
                    r.label,
                    world.describe(&r.connector),
                    disorder.words('u', s.label),
                    world.secs(m.sent_at),
                    world.faults_before(m.sent_at)
                )
            });
        }
    }
    for s in users {
        for (seq, m) in s.said.iter().enumerate() {
            m.outcome.count(&mut report.tally);
            let Outcome::Acked(acked_at) = m.outcome else {
                continue;
            };
            let members = rooms.get(s.room.as_str()).into_iter().flatten();
            for r in members
                .filter(|r| r.label != s.label && r.entered_at.is_some_and(|t| t < m.sent_at) && r.open_at(m.sent_at))
            {
                let judgement = seen.judge(r.label, s.label, seq as u32, r.closed_at, cut);
                judgement.count(&mut report, |missing| {
                    let state = missing.words("connected throughout", 'u', s.label, &|t| world.secs(t));
                    format!(
                        "u{}:{seq} in {} from {} to u{} on {} ({state}, entered at {:.2}s): said at {:.2}s, echoed to its sender at {:.2}s, never arrived; {}",
                        s.label,
                        s.room,
                        world.describe(&s.connector),
                        r.label,
                        world.describe(&r.connector),
                        world.secs(r.entered_at.unwrap_or(cut)),
                        world.secs(m.sent_at),
                        world.secs(acked_at),
                        world.faults_before(m.sent_at)
                    )
                });
            }
        }
    }
    report
}

/// `user u<label> <room> <connector> entered <t> closed <t>`, `u<label> said <seq> at <t>
/// <outcome>` and `u<label> got u<sender>:<seq> at <t>` lines.
pub fn dump(out: &mut impl std::io::Write, users: &[UserLog], secs: &dyn Fn(Instant) -> f64) -> std::io::Result<()> {
    for u in users {
        let entered = u.entered_at.map_or("never".to_owned(), |t| format!("{:.6}", secs(t)));
        let closed = u.closed_at.map_or("open".to_owned(), |t| format!("{:.6}", secs(t)));
        writeln!(
            out,
            "user u{} {} {} entered {entered} closed {closed}",
            u.label, u.room, u.connector
        )?;
        for (seq, said) in u.said.iter().enumerate() {
            let outcome = match said.outcome {
                Outcome::Acked(at) => format!("ok {:.6}", secs(at)),
                other => format!("{other:?}").to_lowercase(),
            };
            writeln!(out, "u{} said {seq} at {:.6} {outcome}", u.label, secs(said.sent_at))?;
        }
        for r in &u.receipts {
            writeln!(out, "u{} got u{}:{} at {:.6}", u.label, r.sender, r.seq, secs(r.at))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::soak::world::Admin;

    fn world() -> World {
        World::new(
            Admin::new("http://127.0.0.1:9").unwrap(),
            Duration::from_secs(1),
            BTreeMap::new(),
        )
    }

    fn at(world: &World, ms: u64) -> Instant {
        world.epoch + Duration::from_millis(ms)
    }

    fn user(label: u32, room: &str, entered: Instant, closed: Option<Instant>) -> UserLog {
        UserLog {
            label,
            room: room.into(),
            connector: "c".into(),
            entered_at: Some(entered),
            closed_at: closed,
            said: Vec::new(),
            receipts: Vec::new(),
        }
    }

    #[test]
    fn a_say_is_owed_to_every_member_that_entered_before_it_and_was_still_there() {
        let w = world();
        let t = |ms| at(&w, ms);
        let cut = t(10_000);
        // u1 says 0..4 at 100, 200, 300, 400; each comes back to it 5 ms later.
        let mut speaker = user(1, "r", t(0), None);
        for i in 0..4u32 {
            let said_at = t(100 * (u64::from(i) + 1));
            speaker.said.push(Said {
                sent_at: said_at,
                outcome: Outcome::Acked(said_at + Duration::from_millis(5)),
            });
            speaker.receipts.push(Receipt {
                sender: 1,
                seq: i,
                at: said_at + Duration::from_millis(5),
            });
        }
        // u2 entered first and stayed: gets 0, 1, 3 (2 is missing).
        let mut stayed = user(2, "r", t(50), None);
        for seq in [0, 1, 3] {
            stayed.receipts.push(Receipt {
                sender: 1,
                seq,
                at: t(500),
            });
        }
        // u3 entered at 250: owed 2 and 3 only; it closed at 350 with nothing: 2 dropped.
        let left = user(3, "r", t(250), Some(t(350)));
        // u4 is in another room and got 0 all the same.
        let mut elsewhere = user(4, "other", t(0), None);
        elsewhere.receipts.push(Receipt {
            sender: 1,
            seq: 0,
            at: t(500),
        });
        let report = analyse(&w, &[speaker, stayed, left, elsewhere], cut);
        let t = &report.tally;
        assert_eq!((t.sent, t.acked), (4, 4), "{t:?}");
        assert_eq!((t.delivered, t.missing, t.dropped_with_session), (3, 1, 1), "{t:?}");
        assert_eq!((t.wrong, t.duplicate, t.reordered), (1, 0, 0), "{t:?}");
    }

    #[test]
    fn a_say_echoed_then_refused_is_owed_to_no_one() {
        let w = world();
        let t = |ms| at(&w, ms);
        // u1's SAY came back to it, then its connector answered an error for it.
        let mut speaker = user(1, "r", t(0), None);
        speaker.said.push(Said {
            sent_at: t(100),
            outcome: Outcome::Acked(t(105)),
        });
        let mut report = PathReport::default();
        let mut pending = None;
        let ended = heard(
            &w,
            &mut speaker,
            "ERR the server did not answer",
            &mut pending,
            &mut report,
        );
        assert!(ended.is_none());
        assert_eq!(speaker.said[0].outcome, Outcome::Refused);
        assert_eq!(report.tally.refused_but_delivered, 1);
        // u2, on a connector the line never reached, misses nothing it was owed.
        let member = user(2, "r", t(50), None);
        let report = analyse(&w, &[speaker, member], t(10_000));
        assert_eq!(
            (report.tally.refused, report.tally.missing),
            (1, 0),
            "{:?}",
            report.tally
        );
    }
}
