//! pomelo's multi-server chat on the real host: a gate, three connectors and three chat
//! backends; 60 users in 6 rooms; exactly-once, in-order delivery within each room; JOIN and
//! LEAVE; and rooms that move when a chat backend stops and starts again.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use supersocket_tests::HostProcess;
use supersocket_tests::net::LineClient;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::mpsc;

const CLUSTER: &str = r#"
shutdown_timeout = "1s"

[[servers]]
name = "gate-server-1"
type = "gate"
listeners = [{ ip = "Loopback", port = 0 }]

[[servers]]
name = "connector-server"
type = "connector"
replicas = 3
listeners = [{ ip = "Loopback", port = 0 }]

# Listeners only so the test can ask a backend which rooms it holds.
[[servers]]
name = "chat-server"
type = "chat"
replicas = 3
listeners = [{ ip = "Loopback", port = 0 }]
"#;

const USERS: usize = 60;
const ROOMS: usize = 6;
const SAYS: usize = 5;

/// One chat user: writes requests, and a task collects every line pushed to it.
struct User {
    uid: String,
    room: String,
    writer: OwnedWriteHalf,
    lines: mpsc::UnboundedReceiver<String>,
    /// Lines received and not yet checked.
    seen: Vec<String>,
}

impl User {
    async fn connect(gate: &mut LineClient<tokio::net::TcpStream>, i: usize) -> Self {
        let uid = format!("u{i:02}");
        let room = format!("room-{}", i % ROOMS);
        let addr: SocketAddr = gate
            .request(&format!("QUERY {uid}"))
            .await
            .parse()
            .expect("QUERY answers host:port");
        let (reader, writer) = supersocket_tests::net::connect_addr(addr).await.into_split();
        let (tx, lines) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut reader = BufReader::new(reader).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            uid,
            room,
            writer,
            lines,
            seen: Vec::new(),
        }
    }

    async fn send(&mut self, line: &str) {
        self.writer
            .write_all(format!("{line}\r\n").as_bytes())
            .await
            .expect("send");
    }

    /// Waits until `count` lines satisfying `wanted` have arrived (at most `within`).
    async fn collect(&mut self, within: Duration, count: usize, wanted: impl Fn(&str) -> bool) -> Vec<String> {
        let deadline = tokio::time::Instant::now() + within;
        while self.seen.iter().filter(|l| wanted(l)).count() < count {
            match tokio::time::timeout_at(deadline, self.lines.recv()).await {
                Ok(Some(line)) => self.seen.push(line),
                _ => panic!(
                    "{}: {} of {count} lines in {within:?}; got {:?}",
                    self.uid,
                    self.seen.len(),
                    self.seen
                ),
            }
        }
        let (taken, rest) = std::mem::take(&mut self.seen).into_iter().partition(|l| wanted(l));
        self.seen = rest;
        taken
    }
}

/// Every member of each room says `tag-k` for k in 0..count; every member must receive exactly
/// those of its room, once each, in each sender's order, within `within`.
async fn talk_and_check(users: &mut [User], tag: &str, count: usize, within: Duration) {
    for user in users.iter_mut() {
        for k in 0..count {
            let text = format!("SAY {tag}-{}-{k}", user.uid);
            user.send(&text).await;
        }
    }
    let mut members: HashMap<String, Vec<String>> = HashMap::new();
    for user in users.iter() {
        members.entry(user.room.clone()).or_default().push(user.uid.clone());
    }
    for user in users.iter_mut() {
        let expected = members[&user.room].len() * count;
        let prefix = format!("MSG {} ", user.room);
        let tagged = format!(" {tag}-");
        let got = user.collect(within, expected, |l| l.contains(&tagged)).await;
        let mut next: HashMap<&str, usize> = HashMap::new();
        for line in &got {
            assert!(line.starts_with(&prefix), "{} got {line:?} from another room", user.uid);
            let mut words = line.split(' ');
            let (_, _, sender, text) = (words.next(), words.next(), words.next().unwrap(), words.next().unwrap());
            let k: usize = text.rsplit('-').next().unwrap().parse().unwrap();
            let expected_k = next.entry(sender).or_insert(0);
            assert_eq!(
                k, *expected_k,
                "{}: {sender}'s messages out of order or repeated: {got:?}",
                user.uid
            );
            *expected_k += 1;
        }
        assert!(next.values().all(|n| *n == count), "{}: {next:?}", user.uid);
    }
}

/// The members a chat backend holds for a room, sorted (after a move they are in re-entry
/// order, connector by connector).
async fn members_on(host: &HostProcess, chat: &str, room: &str) -> String {
    let mut client = LineClient::connect(host.port(chat, 0).await).await;
    let answer = client.request(&format!("MEMBERS {room}")).await;
    let mut uids: Vec<&str> = answer
        .trim_start_matches("OK ")
        .split(',')
        .filter(|u| !u.is_empty())
        .collect();
    uids.sort_unstable();
    format!("OK {}", uids.join(","))
}

fn uids_in(users: &[User], room: &str) -> String {
    format!(
        "OK {}",
        users
            .iter()
            .filter(|u| u.room == room)
            .map(|u| u.uid.as_str())
            .collect::<Vec<_>>()
            .join(",")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_users_in_six_rooms_over_three_connectors_and_three_chats() {
    sixty_users(CLUSTER).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_with_the_chat_backends_in_agent_processes() {
    let isolated = CLUSTER.replace("type = \"chat\"\n", "type = \"chat\"\nisolation = \"process\"\n");
    assert!(isolated.contains("isolation = \"process\""));
    sixty_users(&isolated).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_with_every_instance_in_an_agent_process() {
    sixty_users(&format!("isolation = \"process\"\n{CLUSTER}")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_with_gate_shared_connectors_on_runtimes_and_chats_in_agents() {
    let mixed = CLUSTER
        .replace(
            "type = \"connector\"\n",
            "type = \"connector\"\nisolation = \"runtime\"\n",
        )
        .replace("type = \"chat\"\n", "type = \"chat\"\nisolation = \"process\"\n");
    assert_eq!(mixed.matches("isolation = ").count(), 2);
    sixty_users(&mixed).await;
}

/// The whole scenario on a cluster config.
async fn sixty_users(config: &str) {
    let host = HostProcess::start(config);
    let mut gate = LineClient::connect(host.port("gate-server-1", 0).await).await;

    // Enter one by one: each gets the members so far, earlier members get a JOIN.
    let mut users: Vec<User> = Vec::new();
    for i in 0..USERS {
        let mut user = User::connect(&mut gate, i).await;
        user.send(&format!("ENTER {} {}", user.uid, user.room)).await;
        let ok = user
            .collect(Duration::from_secs(5), 1, |l| {
                l.starts_with("OK ") || l.starts_with("ERR")
            })
            .await;
        users.push(user);
        assert_eq!(
            ok[0],
            uids_in(&users, &users[i].room),
            "ENTER answer of {}",
            users[i].uid
        );
    }
    for (position, user) in users.iter_mut().enumerate() {
        let later: Vec<String> = (position + 1..USERS)
            .filter(|j| j % ROOMS == position % ROOMS)
            .map(|j| format!("JOIN {} u{j:02}", user.room))
            .collect();
        let joins = user
            .collect(Duration::from_secs(5), later.len(), |l| l.starts_with("JOIN "))
            .await;
        assert_eq!(joins, later, "{} sees the later members join, in order", user.uid);
    }
    // Counts of agents arrive with their reports, a few times a second.
    for connector in ["connector-server-1", "connector-server-2", "connector-server-3"] {
        host.wait_server(connector, Duration::from_secs(5), |s| s["sessions"].as_u64() > Some(0))
            .await;
    }

    talk_and_check(&mut users, "hello", SAYS, Duration::from_secs(10)).await;

    // The dispatcher and the backends agree on where room-3 lives.
    let route = host.ctl(&["--output", "json", "route", "chat", "room-3"]).json();
    let home = route["server"].as_str().unwrap().to_owned();
    assert_eq!(members_on(&host, &home, "room-3").await, uids_in(&users, "room-3"));
    for other in ["chat-server-1", "chat-server-2", "chat-server-3"]
        .into_iter()
        .filter(|c| *c != home)
    {
        assert_eq!(
            members_on(&host, other, "room-3").await,
            "OK ",
            "{other} does not hold room-3"
        );
    }

    // The same uid cannot enter a room twice.
    let mut intruder = User::connect(&mut gate, 3).await;
    intruder.send("ENTER u03 room-3").await;
    assert_eq!(
        intruder.collect(Duration::from_secs(5), 1, |_| true).await,
        ["ERR duplicate uid"]
    );

    // QUIT and a plain disconnect both leave the room; the others are told.
    let quitter = users.remove(0);
    let mut quitter_writer = quitter.writer;
    quitter_writer.write_all(b"QUIT\r\n").await.unwrap();
    let dropped = users.remove(0);
    drop(dropped);
    for user in users.iter_mut() {
        let expected = match user.room.as_str() {
            "room-0" => vec!["LEAVE room-0 u00".to_owned()],
            "room-1" => vec!["LEAVE room-1 u01".to_owned()],
            _ => vec![],
        };
        let leaves = user
            .collect(Duration::from_secs(5), expected.len(), |l| l.starts_with("LEAVE "))
            .await;
        assert_eq!(leaves, expected, "{}", user.uid);
    }

    // Stop the backend holding room-3 while one user per room keeps talking: rooms move, the
    // members who said nothing are not lost, and later messages reach everyone within a second.
    let mut talking = std::collections::HashSet::new();
    for user in users.iter_mut().filter(|u| talking.insert(u.room.clone())) {
        let uid = user.uid.clone();
        user.send(&format!("SAY during-{uid}")).await;
    }
    assert_eq!(host.ctl(&["stop", &home]).code, 0);
    let moved = Instant::now();
    talk_and_check(&mut users, "after-stop", 2, Duration::from_secs(1)).await;
    assert!(moved.elapsed() < Duration::from_secs(2));
    let new_home = host.ctl(&["route", "chat", "room-3"]).stdout;
    let new_home = new_home.split_whitespace().next().unwrap().to_owned();
    assert_ne!(new_home, home);
    assert_eq!(
        members_on(&host, &new_home, "room-3").await,
        uids_in(&users, "room-3"),
        "every member moved"
    );

    // Start it again: the rooms it owns by crc32 move back, silently.
    assert_eq!(host.ctl(&["start", &home]).code, 0);
    talk_and_check(&mut users, "after-start", 2, Duration::from_secs(1)).await;
    assert_eq!(members_on(&host, &home, "room-3").await, uids_in(&users, "room-3"));
    assert_eq!(
        members_on(&host, &new_home, "room-3").await,
        "OK ",
        "the old home let room-3 go"
    );
    // A room's lines reach each member in one order, so anything a move had pushed (a JOIN, a
    // LEAVE, an ERR) would have arrived before this last round.
    talk_and_check(&mut users, "last", 1, Duration::from_secs(5)).await;
    for user in users.iter_mut() {
        let unexpected: Vec<&String> = user.seen.iter().filter(|l| !l.contains(" during-")).collect();
        assert!(
            unexpected.is_empty(),
            "{} got stray lines (a move is silent): {unexpected:?}",
            user.uid
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_never_reads_is_closed_and_its_room_loses_nothing() {
    a_member_that_never_reads(CLUSTER).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_never_reads_with_every_instance_in_an_agent_process() {
    a_member_that_never_reads(&format!("isolation = \"process\"\n{CLUSTER}")).await;
}

/// Two members of a room talk far more than a third, who never reads, can be sent: its queue
/// fills, it is closed as a slow reader and the others are told it left; they get every line of
/// each other's, in order, and were never held up for longer than the slow reader's patience.
async fn a_member_that_never_reads(cluster: &str) {
    // More than the silent member's queue (1 MiB by default) and socket buffers hold.
    const LINES: usize = 5000;
    let host = HostProcess::start(cluster);
    let mut gate = LineClient::connect(host.port("gate-server-1", 0).await).await;
    // Users 0, 6 and 12 share room-0.
    let mut talkers = Vec::new();
    for i in [0, 6] {
        let mut user = User::connect(&mut gate, i).await;
        user.send(&format!("ENTER {} {}", user.uid, user.room)).await;
        user.collect(Duration::from_secs(5), 1, |l| l.starts_with("OK ")).await;
        talkers.push(user);
    }
    let addr: SocketAddr = gate.request("QUERY u12").await.parse().unwrap();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut silent = BufReader::new(socket.connect(addr).await.unwrap());
    silent.write_all(b"ENTER u12 room-0\r\n").await.unwrap();
    let mut answer = String::new();
    silent.read_line(&mut answer).await.unwrap();
    assert_eq!(answer, "OK u00,u06,u12\r\n");
    // From here u12 reads nothing.

    let text = "x".repeat(900);
    let started = Instant::now();
    for round in 0..LINES {
        for talker in talkers.iter_mut() {
            let uid = talker.uid.clone();
            talker.send(&format!("SAY {uid}-{round}-{text}")).await;
        }
    }
    for talker in talkers.iter_mut() {
        let got = talker
            .collect(Duration::from_secs(30), 2 * LINES, |l| l.starts_with("MSG room-0 "))
            .await;
        for sender in ["u00", "u06"] {
            let rounds: Vec<usize> = got
                .iter()
                .filter_map(|l| l.strip_prefix(&format!("MSG room-0 {sender} {sender}-")))
                .map(|rest| rest.split('-').next().unwrap().parse().unwrap())
                .collect();
            assert_eq!(
                rounds,
                (0..LINES).collect::<Vec<_>>(),
                "{}: {sender}'s lines",
                talker.uid
            );
        }
        let left = talker
            .collect(Duration::from_secs(5), 1, |l| l.starts_with("LEAVE "))
            .await;
        assert_eq!(
            left,
            ["LEAVE room-0 u12"],
            "{} is told the slow member left",
            talker.uid
        );
    }
    assert!(started.elapsed() < Duration::from_secs(30));
    drop(silent);
}
