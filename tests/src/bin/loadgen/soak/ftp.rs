//! FTP: small files uploaded (STOR) and downloaded again (RETR) through passive mode, their
//! CRC-32s compared. An upload answered 226 is acknowledged; its download must give the same
//! bytes back.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use super::ledger::{PathReport, Tally, Trouble};
use super::replies::count_connections;
use super::rng::Rng;
use super::world::{CHECK, End, Phase, Reconnect, World};

/// Why an exchange failed.
enum Fail {
    /// The connection closed or failed.
    Closed(String),
    /// The server answered with an error code.
    Refused(String),
    /// Nothing within the reply timeout.
    Stalled(String),
}

impl Fail {
    fn text(&self) -> &str {
        match self {
            Fail::Closed(t) | Fail::Refused(t) | Fail::Stalled(t) => t,
        }
    }

    /// Counts a cycle that failed at `step` (`upload`, `download`): stalled, or else in the
    /// count `otherwise` picks; its reason with it. Returns how the connection ends.
    fn count(&self, step: &str, otherwise: fn(&mut Tally) -> &mut u64, report: &mut PathReport) -> End {
        match self {
            Fail::Stalled(_) => report.tally.stalled += 1,
            _ => *otherwise(&mut report.tally) += 1,
        }
        report.reason(&format!("{step}: {}", self.text()));
        ended(self)
    }
}

/// One FTP client slot on `server`: upload, download, compare, delete, every `period`.
pub async fn client(world: &World, server: String, period: Duration, mut rng: Rng) -> PathReport {
    let mut report = PathReport::default();
    let mut connections = Reconnect::new(&server);
    while let Some(stream) = connections.next(world).await {
        let end = session(world, stream, &server, period, &mut rng, &mut report).await;
        if !connections.ended(world, end) {
            break;
        }
    }
    count_connections(&mut report, connections.counts);
    report
}

/// The control connection.
struct Control {
    lines: Lines<BufReader<OwnedReadHalf>>,
    writer: OwnedWriteHalf,
    timeout: Duration,
}

impl Control {
    async fn line(&mut self) -> Result<String, Fail> {
        match tokio::time::timeout(self.timeout, self.lines.next_line()).await {
            Ok(Ok(Some(line))) => Ok(line),
            Ok(_) => Err(Fail::Closed("control connection closed".into())),
            Err(_) => Err(Fail::Stalled("no reply".into())),
        }
    }

    /// One reply (all lines of a multi-line one): its code and first line.
    async fn reply(&mut self) -> Result<(u16, String), Fail> {
        let first = self.line().await?;
        let code: u16 = first
            .get(..3)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| Fail::Refused(format!("not a reply: {first:?}")))?;
        if first.as_bytes().get(3) == Some(&b'-') {
            let last = format!("{code} ");
            while !self.line().await?.starts_with(&last) {}
        }
        Ok((code, first))
    }

    /// Sends a command; the reply must have one of `codes`.
    async fn command(&mut self, command: &str, codes: &[u16]) -> Result<String, Fail> {
        self.send(command).await?;
        self.expect(command, codes).await
    }

    async fn send(&mut self, command: &str) -> Result<(), Fail> {
        let line = format!("{command}\r\n");
        match tokio::time::timeout(self.timeout, self.writer.write_all(line.as_bytes())).await {
            Ok(Ok(())) => Ok(()),
            _ => Err(Fail::Closed(format!("{command}: write failed"))),
        }
    }

    async fn expect(&mut self, command: &str, codes: &[u16]) -> Result<String, Fail> {
        let verb = command.split(' ').next().unwrap_or(command);
        let (code, line) = self.reply().await.map_err(|f| match f {
            Fail::Closed(t) => Fail::Closed(format!("{verb}: {t}")),
            Fail::Stalled(t) => Fail::Stalled(format!("{verb}: {t}")),
            Fail::Refused(t) => Fail::Refused(format!("{verb}: {t}")),
        })?;
        if codes.contains(&code) {
            Ok(line)
        } else {
            Err(Fail::Refused(format!("{verb}: {line}")))
        }
    }

    /// PASV, then a connection to the address it names.
    async fn passive(&mut self, world: &World) -> Result<TcpStream, Fail> {
        let line = self.command("PASV", &[227]).await?;
        let numbers: Vec<u8> = line
            .split_once('(')
            .and_then(|(_, rest)| rest.split_once(')'))
            .map(|(inner, _)| inner.split(',').filter_map(|n| n.trim().parse().ok()).collect())
            .unwrap_or_default();
        let [a, b, c, d, p1, p2] = numbers[..] else {
            return Err(Fail::Refused(format!("PASV: {line}")));
        };
        let addr = SocketAddr::from((Ipv4Addr::new(a, b, c, d), u16::from(p1) << 8 | u16::from(p2)));
        world
            .connect_addr(addr)
            .await
            .map_err(|e| Fail::Closed(format!("data connection: {e}")))
    }
}

async fn session(
    world: &World,
    stream: TcpStream,
    server: &str,
    period: Duration,
    rng: &mut Rng,
    report: &mut PathReport,
) -> End {
    let label = world.label();
    let (reader, writer) = stream.into_split();
    let mut control = Control {
        lines: BufReader::new(reader).lines(),
        writer,
        timeout: world.reply_timeout,
    };
    let login = async {
        control.expect("greeting", &[220]).await?;
        if control.command("USER anonymous", &[230, 331]).await?.starts_with("331") {
            control.command("PASS soak@example.com", &[230]).await?;
        }
        control.command("TYPE I", &[200]).await
    };
    if let Err(fail) = login.await {
        report.reason(&format!("login: {}", fail.text()));
        return ended(&fail);
    }
    let mut seq = 0u64;
    loop {
        let until = Instant::now() + period;
        while Instant::now() < until && world.running() {
            tokio::time::sleep(CHECK.min(until.saturating_duration_since(Instant::now()))).await;
        }
        if !world.running() {
            // Hold the control connection until the host closes it or the run finishes.
            loop {
                tokio::select! {
                    line = control.lines.next_line() => if !matches!(line, Ok(Some(_))) { return End::Closed },
                    _ = tokio::time::sleep(CHECK) => if world.phase() == Phase::Finish { return End::Finish },
                }
            }
        }
        let name = format!("soak-f{label}-{seq}.bin");
        seq += 1;
        let size = 1 + rng.below(64 * 1024) as usize;
        let data: Vec<u8> = (0..size).map(|_| rng.next_u64() as u8).collect();
        report.tally.sent += 1;
        world.begin(1);
        let outcome = cycle(world, &mut control, &name, &data).await;
        world.end(1);
        // Stored (226): acknowledged, whatever the download gives.
        if !matches!(outcome, Err(Cycle::Upload(_))) {
            report.tally.acked += 1;
        }
        match outcome {
            Ok(()) => report.tally.delivered += 1,
            // Not stored: refused (the client saw an error), unless it stalled.
            Err(Cycle::Upload(fail)) => return fail.count("upload", |t| &mut t.refused, report),
            // The download failed: dropped with the session, unless it stalled.
            Err(Cycle::Download(fail)) => return fail.count("download", |t| &mut t.dropped_with_session, report),
            Err(Cycle::Missing(line)) => {
                report.count(Trouble::Missing, || {
                    format!(
                        "ftp on {}: {name} ({size} bytes) stored (226), then RETR answered {line:?} at {:.2}s; {}",
                        world.describe(server),
                        world.secs(Instant::now()),
                        world.faults_before(Instant::now())
                    )
                });
            }
            Err(Cycle::Differs(got)) => {
                report.count(Trouble::Wrong, || {
                    format!(
                        "ftp on {}: {name} stored {size} bytes crc32 {:08x}, read back {} bytes crc32 {:08x} at {:.2}s; {}",
                        world.describe(server),
                        crc32fast::hash(&data),
                        got.len(),
                        crc32fast::hash(&got),
                        world.secs(Instant::now()),
                        world.faults_before(Instant::now())
                    )
                });
            }
        }
    }
}

fn ended(fail: &Fail) -> End {
    match fail {
        Fail::Closed(_) => End::Closed,
        _ => End::Dropped,
    }
}

/// How an upload-download cycle went wrong.
enum Cycle {
    Upload(Fail),
    Download(Fail),
    /// RETR of a stored file answered 550.
    Missing(String),
    /// RETR gave other bytes.
    Differs(Vec<u8>),
}

async fn cycle(world: &World, control: &mut Control, name: &str, data: &[u8]) -> Result<(), Cycle> {
    upload(world, control, name, data).await.map_err(Cycle::Upload)?;
    let got = match download(world, control, name).await {
        Ok(got) => got,
        Err(Fail::Refused(line)) if line.starts_with("RETR: 550") => return Err(Cycle::Missing(line)),
        Err(fail) => return Err(Cycle::Download(fail)),
    };
    if crc32fast::hash(&got) != crc32fast::hash(data) || got.len() != data.len() {
        return Err(Cycle::Differs(got));
    }
    // Keeps the served folder small; a failure here shows in the next cycle.
    let _ = control.command(&format!("DELE {name}"), &[250]).await;
    Ok(())
}

async fn upload(world: &World, control: &mut Control, name: &str, data: &[u8]) -> Result<(), Fail> {
    let mut data_connection = control.passive(world).await?;
    control.command(&format!("STOR {name}"), &[125, 150]).await?;
    let sent = tokio::time::timeout(world.reply_timeout, async {
        data_connection.write_all(data).await?;
        data_connection.shutdown().await
    })
    .await;
    match sent {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(Fail::Closed(format!("STOR data: {e}"))),
        Err(_) => return Err(Fail::Stalled("STOR data: stalled".into())),
    }
    drop(data_connection);
    control.expect("STOR", &[226, 250]).await.map(drop)
}

async fn download(world: &World, control: &mut Control, name: &str) -> Result<Vec<u8>, Fail> {
    let mut data_connection = control.passive(world).await?;
    control.command(&format!("RETR {name}"), &[125, 150]).await?;
    let mut got = Vec::new();
    match tokio::time::timeout(world.reply_timeout, data_connection.read_to_end(&mut got)).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => return Err(Fail::Closed(format!("RETR data: {e}"))),
        Err(_) => return Err(Fail::Stalled("RETR data: stalled".into())),
    }
    control.expect("RETR", &[226, 250]).await?;
    Ok(got)
}
