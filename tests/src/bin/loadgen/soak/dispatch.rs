//! DISPATCH between `command` instances of every isolation level. Receiver sessions learn
//! their ids with WHOAMI and record every line that arrives; sender sessions pipeline
//! `DISPATCH <server> <id> d<sender>:<seq>` to receivers picked at random and record each
//! answer (`OK` or `ERR ...`, in order). The admin API's `POST .../sessions/{id}/send` is one
//! more sender (202 is its OK). The analysis holds every OK against what its receiver got:
//! exactly once, in the sender's order, unless the receiver's session closed first.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use super::ledger::{Outcome, PathReport, Receipt, Receipts, Trouble};
use super::replies::{count_connections, unserved};
use super::rng::Rng;
use super::world::{CHECK, End, Phase, Reconnect, World};

/// A receiver session senders may address now.
#[derive(Debug, Clone)]
struct Live {
    server: Arc<str>,
    id: String,
    incarnation: u32,
}

/// The receivers open now, one slot per receiver task.
pub struct Registry {
    slots: Mutex<Vec<Option<Live>>>,
}

impl Registry {
    pub fn new(receivers: usize) -> Self {
        Self {
            slots: Mutex::new(vec![None; receivers]),
        }
    }

    fn set(&self, slot: usize, live: Option<Live>) {
        self.slots.lock().unwrap_or_else(|e| e.into_inner())[slot] = live;
    }

    fn pick(&self, rng: &mut Rng) -> Option<Live> {
        let slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        let live: Vec<&Live> = slots.iter().flatten().collect();
        rng.pick(&live).map(|l| (*l).clone())
    }
}

/// One DISPATCH a sender sent.
pub struct Sent {
    /// The receiver incarnation it was addressed to, and its instance.
    to: u32,
    to_server: Arc<str>,
    sent_at: Instant,
    outcome: Outcome,
    /// Refused with `ERR no session`.
    no_session: bool,
}

/// Everything one sender connection sent.
pub struct SenderLog {
    label: u32,
    /// How it sends: [`DISPATCH`] or [`ADMIN_SEND`].
    via: &'static str,
    server: String,
    /// Indexed by sequence number.
    sent: Vec<Sent>,
}

/// Everything one receiver connection (one session id) got.
pub struct ReceiverLog {
    incarnation: u32,
    server: String,
    id: String,
    /// When the host closed it; `None` if it was open when the run finished.
    closed_at: Option<Instant>,
    /// The `d<sender>:<seq>` lines it got.
    receipts: Vec<Receipt>,
}

impl ReceiverLog {
    fn open_at(&self, at: Instant) -> bool {
        self.closed_at.is_none_or(|closed| closed > at)
    }

    /// `<server> session <id>`, for examples.
    fn session(&self, world: &World) -> String {
        format!("{} session {}", world.describe(&self.server), self.id)
    }
}

/// A receiver slot on `server`: reconnects (with a new id) whenever its session closes.
pub async fn receiver(
    world: &World,
    registry: &Registry,
    slot: usize,
    server: String,
) -> (Vec<ReceiverLog>, PathReport) {
    let mut logs = Vec::new();
    let mut report = PathReport::default();
    let mut connections = Reconnect::new(&server);
    while let Some(stream) = connections.next(world).await {
        let (end, log) = receive(world, registry, slot, &server, stream, &mut report).await;
        logs.extend(log);
        if !connections.ended(world, end) {
            break;
        }
    }
    count_connections(&mut report, connections.counts);
    (logs, report)
}

async fn receive(
    world: &World,
    registry: &Registry,
    slot: usize,
    server: &str,
    stream: TcpStream,
    report: &mut PathReport,
) -> (End, Option<ReceiverLog>) {
    let (reader, mut writer) = stream.into_split();
    let mut lines = BufReader::new(reader).lines();
    if writer.write_all(b"WHOAMI\r\n").await.is_err() {
        return (End::Closed, None);
    }
    let asked_at = Instant::now();
    let id = match tokio::time::timeout(world.reply_timeout, lines.next_line()).await {
        Ok(Ok(Some(id))) => id,
        Ok(_) => {
            unserved(
                world,
                &format!("receiver on {} (WHOAMI)", world.describe(server)),
                asked_at,
                report,
            );
            return (End::Closed, None);
        }
        Err(_) => {
            report.examples.add("stalled", || {
                format!(
                    "WHOAMI on {} unanswered from {:.2}s; {}",
                    world.describe(server),
                    world.secs(asked_at),
                    world.faults_before(asked_at)
                )
            });
            return (End::Dropped, None);
        }
    };
    if id.is_empty() || id.contains(char::is_whitespace) {
        report.count(Trouble::Wrong, || {
            format!("WHOAMI on {} answered {id:?}", world.describe(server))
        });
        return (End::Dropped, None);
    }
    let mut log = ReceiverLog {
        incarnation: world.label(),
        server: server.to_owned(),
        id: id.clone(),
        closed_at: None,
        receipts: Vec::new(),
    };
    registry.set(
        slot,
        Some(Live {
            server: server.into(),
            id,
            incarnation: log.incarnation,
        }),
    );
    let mut tick = tokio::time::interval(CHECK);
    let end = loop {
        tokio::select! {
            line = lines.next_line() => {
                let Ok(Some(line)) = line else { break End::Closed };
                match parse_label(&line, 'd') {
                    Some((sender, seq)) => log.receipts.push(Receipt { sender, seq, at: Instant::now() }),
                    None => {
                        report.count(Trouble::Wrong, || format!(
                            "receiver {} got {line:?}, which no sender sent; {}",
                            log.session(world), world.faults_before(Instant::now())));
                    }
                }
            }
            _ = tick.tick() => {
                if world.phase() == Phase::Finish {
                    break End::Finish;
                }
            }
        }
    };
    registry.set(slot, None);
    if end == End::Closed {
        log.closed_at = Some(Instant::now());
    }
    (end, Some(log))
}

/// `<prefix><label>:<seq>`.
pub fn parse_label(text: &str, prefix: char) -> Option<(u32, u32)> {
    let (label, seq) = text.strip_prefix(prefix)?.split_once(':')?;
    Some((label.parse().ok()?, seq.parse().ok()?))
}

/// Senders that are sessions of `command` instances.
pub const DISPATCH: &str = "DISPATCH";
/// The sender that is the admin API.
pub const ADMIN_SEND: &str = "admin send";

/// The admin API as a sender: `POST /api/v1/servers/{server}/sessions/{id}/send` to random live
/// receivers, one at a time, every `period`.
pub async fn admin_sender(
    world: &World,
    registry: &Registry,
    period: Duration,
    mut rng: Rng,
) -> (Vec<SenderLog>, PathReport) {
    let mut report = PathReport::default();
    let mut log = SenderLog {
        label: world.label(),
        via: ADMIN_SEND,
        server: "admin-API".into(),
        sent: Vec::new(),
    };
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while world.running() {
        tick.tick().await;
        let Some(to) = registry.pick(&mut rng) else { continue };
        let seq = log.sent.len();
        let sent_at = Instant::now();
        world.begin(1);
        let path = format!("/api/v1/servers/{}/sessions/{}/send", to.server, to.id);
        let body = serde_json::json!({ "text": format!("d{}:{seq}\r\n", log.label) });
        let answer = world.admin.post_json(&path, &body).await;
        world.end(1);
        let mut no_session = false;
        let outcome = match answer {
            Ok((202, _)) => Outcome::Acked(Instant::now()),
            Ok((_, body)) => {
                let code = body["error"]["code"].as_str().unwrap_or("error");
                no_session = code == "not_found";
                report.reason(&format!("answered {code}"));
                Outcome::Refused
            }
            Err(e) => {
                report.reason(&format!("no answer: {e}"));
                Outcome::Stalled
            }
        };
        if sent_at.elapsed() > world.slow {
            report.tally.slow += 1;
        }
        log.sent.push(Sent {
            to: to.incarnation,
            to_server: to.server,
            sent_at,
            outcome,
            no_session,
        });
    }
    (vec![log], report)
}

/// A sender slot on `server`: pipelines up to `window` DISPATCHes to random live receivers.
pub async fn sender(
    world: &World,
    registry: &Registry,
    server: String,
    window: usize,
    period: Duration,
    mut rng: Rng,
) -> (Vec<SenderLog>, PathReport) {
    let mut logs = Vec::new();
    let mut report = PathReport::default();
    let mut connections = Reconnect::new(&server);
    while let Some(stream) = connections.next(world).await {
        let mut log = SenderLog {
            label: world.label(),
            via: DISPATCH,
            server: server.clone(),
            sent: Vec::new(),
        };
        let end = send(world, registry, stream, &mut log, window, period, &mut rng, &mut report).await;
        logs.push(log);
        if !connections.ended(world, end) {
            break;
        }
    }
    count_connections(&mut report, connections.counts);
    (logs, report)
}

#[allow(clippy::too_many_arguments)]
async fn send(
    world: &World,
    registry: &Registry,
    stream: TcpStream,
    log: &mut SenderLog,
    window: usize,
    period: Duration,
    rng: &mut Rng,
    report: &mut PathReport,
) -> End {
    let (reader, mut writer) = stream.into_split();
    let mut lines = BufReader::new(reader).lines();
    let mut outstanding: VecDeque<usize> = VecDeque::new();
    let mut last_progress = Instant::now();
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut served = false;
    let end = loop {
        tokio::select! {
            line = lines.next_line() => {
                let Ok(Some(line)) = line else { break End::Closed };
                last_progress = Instant::now();
                served = true;
                let answered = if line == "OK" || line.starts_with("ERR") { outstanding.pop_front() } else { None };
                let Some(seq) = answered else {
                    report.count(Trouble::Wrong, || format!(
                        "sender d{} on {} got {line:?}, not an answer to a DISPATCH in flight; {}",
                        log.label, world.describe(&log.server), world.faults_before(Instant::now())));
                    continue;
                };
                world.end(1);
                let sent = &mut log.sent[seq];
                if line == "OK" {
                    sent.outcome = Outcome::Acked(Instant::now());
                    if sent.sent_at.elapsed() > world.slow {
                        let (took, sent_at, to) = (sent.sent_at.elapsed(), sent.sent_at, sent.to_server.clone());
                        report.count(Trouble::Slow, || format!(
                            "DISPATCH d{}:{seq} from {} to {}, sent at {:.2}s, answered OK after {took:.1?}; {}",
                            log.label, world.describe(&log.server), world.describe(&to), world.secs(sent_at),
                            world.faults_before(sent_at)));
                    }
                } else {
                    sent.outcome = Outcome::Refused;
                    sent.no_session = line.starts_with("ERR no session");
                    report.reason(&line);
                }
            }
            _ = tick.tick() => {
                if world.phase() == Phase::Finish {
                    break End::Finish;
                }
                if !outstanding.is_empty() && last_progress.elapsed() > world.reply_timeout {
                    let first = &log.sent[outstanding[0]];
                    let since = first.sent_at.max(last_progress);
                    let to = first.to_server.clone();
                    report.examples.add("stalled", || format!(
                        "sender d{} on {}: {} DISPATCHes unanswered from {:.2}s for {:?} (the first to {}); {}",
                        log.label, world.describe(&log.server), outstanding.len(), world.secs(since),
                        world.reply_timeout, world.describe(&to), world.faults_before(since)));
                    break End::Dropped;
                }
                if !world.running() || outstanding.len() >= window {
                    continue;
                }
                let Some(to) = registry.pick(rng) else { continue };
                let seq = log.sent.len();
                if outstanding.is_empty() {
                    last_progress = Instant::now();
                }
                log.sent.push(Sent { to: to.incarnation, to_server: to.server.clone(), sent_at: Instant::now(), outcome: Outcome::Pending, no_session: false });
                outstanding.push_back(seq);
                world.begin(1);
                let line = format!("DISPATCH {} {} d{}:{seq}\r\n", to.server, to.id, log.label);
                let written = tokio::time::timeout(world.reply_timeout, writer.write_all(line.as_bytes())).await;
                if !matches!(written, Ok(Ok(()))) {
                    break End::Closed;
                }
            }
        }
    };
    let outcome = if end == End::Closed {
        Outcome::Closed
    } else {
        Outcome::Stalled
    };
    for &seq in &outstanding {
        log.sent[seq].outcome = outcome;
        if outcome == Outcome::Closed {
            report.reason("closed before the answer");
        }
    }
    if end == End::Closed
        && !served
        && let Some(&first) = outstanding.front()
    {
        let what = format!("sender d{} on {}", log.label, world.describe(&log.server));
        unserved(world, &what, log.sent[first].sent_at, report);
    }
    world.end(outstanding.len());
    end
}

/// Holds every message the senders of kind `via` sent against what the receivers recorded;
/// deliveries after `cut` are late. Lines no sender sent count with [`DISPATCH`].
pub fn analyse(world: &World, via: &str, senders: &[SenderLog], receivers: &[ReceiverLog], cut: Instant) -> PathReport {
    let mut report = PathReport::default();
    let by_label: HashMap<u32, &SenderLog> = senders.iter().map(|s| (s.label, s)).collect();
    let by_incarnation: HashMap<u32, &ReceiverLog> = receivers.iter().map(|r| (r.incarnation, r)).collect();
    // By (receiver incarnation, sender label).
    let mut seen = Receipts::default();
    for r in receivers {
        for receipt in &r.receipts {
            let sent = by_label
                .get(&receipt.sender)
                .and_then(|s| s.sent.get(receipt.seq as usize).map(|m| (*s, m)));
            let Some((s, m)) = sent else {
                if via != DISPATCH {
                    continue;
                }
                report.count(Trouble::Wrong, || {
                    format!(
                        "receiver {} got d{}:{}, which was never sent",
                        r.session(world),
                        receipt.sender,
                        receipt.seq
                    )
                });
                continue;
            };
            if s.via != via {
                continue;
            }
            if m.to != r.incarnation {
                let meant = by_incarnation.get(&m.to);
                report.count(Trouble::Wrong, || {
                    format!(
                        "d{}:{} sent from {} to {} arrived at {} instead; {}",
                        s.label,
                        receipt.seq,
                        world.describe(&s.server),
                        meant.map_or("? session ?".to_owned(), |t| t.session(world)),
                        r.session(world),
                        world.faults_before(m.sent_at)
                    )
                });
                continue;
            }
            seen.note(r.incarnation, receipt, m.outcome, &mut report, |disorder| {
                format!(
                    "d{}:{} from {} reached {} {}; sent at {:.2}s, {}",
                    s.label,
                    receipt.seq,
                    world.describe(&s.server),
                    r.session(world),
                    disorder.words('d', s.label),
                    world.secs(m.sent_at),
                    world.faults_before(m.sent_at)
                )
            });
        }
    }
    for s in senders.iter().filter(|s| s.via == via) {
        for (seq, m) in s.sent.iter().enumerate() {
            m.outcome.count(&mut report.tally);
            let Some(r) = by_incarnation.get(&m.to) else {
                continue;
            };
            if m.no_session && r.open_at(cut) {
                // The session had answered WHOAMI before the DISPATCH and was still connected
                // at the end: the host had it, and said it did not.
                report.count(Trouble::WronglyRefused, || {
                    format!(
                        "d{}:{seq} from {} to {} (connected throughout) answered ERR no session; sent at {:.2}s, {}",
                        s.label,
                        world.describe(&s.server),
                        r.session(world),
                        world.secs(m.sent_at),
                        world.faults_before(m.sent_at)
                    )
                });
            }
            let Outcome::Acked(acked_at) = m.outcome else {
                continue;
            };
            let judgement = seen.judge(r.incarnation, s.label, seq as u32, r.closed_at, cut);
            judgement.count(&mut report, |missing| {
                let state = missing.words("open throughout", 'd', s.label, &|t| world.secs(t));
                format!(
                    "d{}:{seq} ({}) from {} to {} ({state}): sent at {:.2}s, OK at {:.2}s, never arrived; {}",
                    s.label,
                    s.via,
                    world.describe(&s.server),
                    r.session(world),
                    world.secs(m.sent_at),
                    world.secs(acked_at),
                    world.faults_before(m.sent_at)
                )
            });
        }
    }
    report
}

/// `send d<label> <server> <seq> to r<incarnation> at <t> <outcome>` and
/// `receiver r<incarnation> <server> <id> ...` then `got d<label>:<seq> at <t>` lines.
pub fn dump(
    out: &mut impl std::io::Write,
    senders: &[SenderLog],
    receivers: &[ReceiverLog],
    secs: &dyn Fn(Instant) -> f64,
) -> std::io::Result<()> {
    for s in senders {
        for (seq, m) in s.sent.iter().enumerate() {
            let outcome = match m.outcome {
                Outcome::Acked(at) => format!("ok {:.6}", secs(at)),
                other => format!("{other:?}").to_lowercase(),
            };
            writeln!(
                out,
                "send d{} {} {seq} to r{} at {:.6} {outcome}",
                s.label,
                s.server,
                m.to,
                secs(m.sent_at)
            )?;
        }
    }
    for r in receivers {
        let closed = r
            .closed_at
            .map_or("open".to_owned(), |c| format!("closed {:.6}", secs(c)));
        writeln!(out, "receiver r{} {} {} {closed}", r.incarnation, r.server, r.id)?;
        for receipt in &r.receipts {
            writeln!(
                out,
                "r{} got d{}:{} at {:.6}",
                r.incarnation,
                receipt.sender,
                receipt.seq,
                secs(receipt.at)
            )?;
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

    fn sent(world: &World, to: u32, ms: u64, outcome: Outcome) -> Sent {
        Sent {
            to,
            to_server: "B".into(),
            sent_at: at(world, ms),
            outcome,
            no_session: false,
        }
    }

    fn receiver(incarnation: u32, closed_at: Option<Instant>, got: &[(u32, u32, Instant)]) -> ReceiverLog {
        ReceiverLog {
            incarnation,
            server: "B".into(),
            id: format!("id{incarnation}"),
            closed_at,
            receipts: got
                .iter()
                .map(|&(sender, seq, at)| Receipt { sender, seq, at })
                .collect(),
        }
    }

    #[test]
    fn every_acknowledged_message_is_delivered_dropped_with_its_session_or_lost() {
        let w = world();
        let ok = |ms| Outcome::Acked(at(&w, ms));
        let cut = at(&w, 10_000);
        // Sender 1 sends 0..6 to receiver 10 (open throughout) and 6..9 to receiver 11 (closed
        // at 5 s).
        let mut messages: Vec<Sent> = (0..6).map(|i| sent(&w, 10, 100 * i, ok(100 * i + 1))).collect();
        messages.extend((6..9).map(|i| sent(&w, 11, 100 * i, ok(100 * i + 1))));
        messages.push(sent(&w, 10, 900, Outcome::Refused));
        messages.push(sent(&w, 10, 1000, Outcome::Closed));
        let senders = [SenderLog {
            label: 1,
            via: DISPATCH,
            server: "A".into(),
            sent: messages,
        }];
        let receivers = [
            // 0 once, 1 twice, 3 before 2 (reordered), 4 missing, 5 after the cut (late),
            // 9 refused yet delivered, and a line for receiver 11 that came here.
            receiver(
                10,
                None,
                &[
                    (1, 0, at(&w, 10)),
                    (1, 1, at(&w, 110)),
                    (1, 1, at(&w, 120)),
                    (1, 3, at(&w, 310)),
                    (1, 2, at(&w, 320)),
                    (1, 9, at(&w, 910)),
                    (1, 6, at(&w, 920)),
                    (1, 5, at(&w, 11_000)),
                ],
            ),
            // Closed at 5 s having got 7: 6 is missing (a gap), 8 dropped with the session.
            receiver(11, Some(at(&w, 5_000)), &[(1, 7, at(&w, 710))]),
        ];
        let report = analyse(&w, DISPATCH, &senders, &receivers, cut);
        let t = &report.tally;
        assert_eq!((t.sent, t.acked, t.refused, t.stalled), (11, 9, 2, 0), "{t:?}");
        // Delivered: 0, 1, 2, 3 at 10 and 7 at 11.
        assert_eq!(t.delivered, 5, "{t:?}");
        assert_eq!((t.missing, t.duplicate, t.reordered, t.wrong), (2, 1, 1, 1), "{t:?}");
        assert_eq!(
            (t.late, t.dropped_with_session, t.refused_but_delivered),
            (1, 1, 1),
            "{t:?}"
        );
    }

    #[test]
    fn a_line_no_sender_sent_is_wrong_and_labels_parse() {
        let w = world();
        let receivers = [receiver(3, None, &[(7, 0, at(&w, 1))])];
        let report = analyse(&w, DISPATCH, &[], &receivers, at(&w, 10));
        assert_eq!(report.tally.wrong, 1);
        assert_eq!(parse_label("d12:34", 'd'), Some((12, 34)));
        assert_eq!(parse_label("u12:34", 'd'), None);
        assert_eq!(parse_label("d12", 'd'), None);
    }
}
