//! Connections the kernel has already accepted when a stop begins, or while an agent restarts.
//! Just before a stop, a restart or the final SIGTERM, and just after an agent is killed, a few
//! connections are opened to the instance (an echo or command one) and a request is written
//! on each. Every one must be answered: a stop takes the listen backlog before it closes a
//! listener and drains those connections like any session (SPEC §9), and while an agent
//! restarts, new connections wait in the backlog for the next agent. One closed without its
//! answer is a lost request.

use std::net::SocketAddr;
use std::time::Instant;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;

use super::ledger::{PathReport, Trouble};
use super::world::World;

/// Connections opened per probe.
pub const PROBES: usize = 12;

/// How one probe connection ended.
pub enum Answer {
    Served,
    /// Closed (or reset) without the answer: what the client got, and how it ended.
    Dropped(String),
    Stalled,
}

/// A probe under way: connections open, requests written, answers awaited.
pub struct Probe {
    server: String,
    /// When it was opened (`just before a stop`, ...).
    when: &'static str,
    at: Instant,
    readers: Vec<JoinHandle<Answer>>,
}

/// Opens the probe connections to `server` (an entry of `GET /api/v1/servers`) and writes a
/// request on each; `None` if it is not an echo or command instance, or not running.
pub async fn open(world: &World, server: &Value, when: &'static str) -> Option<Probe> {
    let (request, reply): (&[u8], &[u8]) = match server["type"].as_str()? {
        "echo" => (b"backlog probe\n", b"backlog probe\n"),
        "command" => (b"PING\r\n", b"PONG\r\n"),
        _ => return None,
    };
    let port = server["listeners"][0]["port"].as_u64()? as u16;
    let mut readers = Vec::new();
    for _ in 0..PROBES {
        let Ok(mut stream) = world.connect_addr(SocketAddr::from(([127, 0, 0, 1], port))).await else {
            break;
        };
        if stream.write_all(request).await.is_err() {
            break;
        }
        let timeout = world.reply_timeout;
        readers.push(tokio::spawn(async move {
            let mut got = Vec::new();
            let mut buf = [0u8; 64];
            let read = tokio::time::timeout(timeout, async {
                while got.len() < reply.len() {
                    match stream.read(&mut buf).await {
                        Ok(0) => return Err("closed".to_owned()),
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                        Err(e) => return Err(e.to_string()),
                    }
                }
                Ok(())
            })
            .await;
            match read {
                Ok(Ok(())) if got.starts_with(reply) => Answer::Served,
                Ok(Ok(())) => Answer::Dropped(format!("answered {:?}", String::from_utf8_lossy(&got))),
                Ok(Err(how)) => Answer::Dropped(format!("{how} after {} bytes", got.len())),
                Err(_) => Answer::Stalled,
            }
        }));
    }
    Some(Probe {
        server: server["name"].as_str()?.to_owned(),
        when,
        at: Instant::now(),
        readers,
    })
}

impl Probe {
    /// Waits for the answers and counts them: each probe is a request sent, served ones are
    /// delivered, dropped ones missing.
    pub async fn check(self, world: &World, report: &mut PathReport) {
        for reader in self.readers {
            report.tally.sent += 1;
            report.tally.connections += 1;
            match reader.await {
                Ok(Answer::Served) => {
                    report.tally.acked += 1;
                    report.tally.delivered += 1;
                }
                Ok(Answer::Dropped(how)) => {
                    report.reason(&format!("dropped by {} {}", world.describe(&self.server), self.when));
                    report.tally.unserved_connections += 1;
                    report.count(Trouble::Missing, || {
                        format!(
                            "a connection to {} opened with its request written at {:.2}s, {}: {how}, unanswered",
                            world.describe(&self.server),
                            world.secs(self.at),
                            self.when
                        )
                    });
                }
                Ok(Answer::Stalled) | Err(_) => {
                    report.count(Trouble::Stalled, || {
                        format!(
                            "a connection to {} opened {} at {:.2}s: no answer within {:?}",
                            world.describe(&self.server),
                            self.when,
                            world.secs(self.at),
                            world.reply_timeout
                        )
                    });
                }
            }
        }
    }
}
