//! The session hot path allocates nothing per package in steady state: a counting global
//! allocator watches the whole process while a client drives thousands of packages through a
//! real instance on loopback.

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicU64, Ordering};

use supersocket::HostBuilder;

mod common;

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards every call to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const CONFIG: &str = r#"
[[servers]]
name = "Echo"
type = "echo"
listeners = [{ ip = "Loopback", port = 0 }]

[[servers]]
name = "Cmd"
type = "command"
listeners = [{ ip = "Loopback", port = 0 }]
"#;

/// Sends `request` and reads `reply.len()` bytes back, `rounds` times; returns the allocations
/// made by the whole process during the last `measured` rounds.
fn drive(port: u16, request: &[u8], reply: &[u8], rounds: usize, measured: usize) -> u64 {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_nodelay(true).unwrap();
    let mut back = vec![0u8; reply.len()];
    let mut before = 0;
    for round in 0..rounds {
        if round == rounds - measured {
            before = ALLOCATIONS.load(Ordering::SeqCst);
        }
        stream.write_all(request).unwrap();
        stream.read_exact(&mut back).unwrap();
        assert_eq!(back, reply);
    }
    ALLOCATIONS.load(Ordering::SeqCst) - before
}

#[test]
fn steady_state_allocates_nothing_per_package() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let host = common::start_host(HostBuilder::new(), CONFIG).await;
        let (echo, cmd) = (common::port(&host, "Echo"), common::port(&host, "Cmd"));

        // 100 pipelined commands per write: 20,000 measured packages.
        let requests = b"ADD 1 2\r\n".repeat(100);
        let replies = b"3\r\n".repeat(100);
        let cmd_allocations = tokio::task::spawn_blocking(move || drive(cmd, &requests, &replies, 400, 200))
            .await
            .unwrap();
        // 64-byte echoes: 5,000 measured packages.
        let message = [b'e'; 64];
        let echo_allocations = tokio::task::spawn_blocking(move || drive(echo, &message, &message, 10_000, 5_000))
            .await
            .unwrap();

        // Allow a few for runtime book-keeping; per-package allocation would be thousands.
        assert!(
            cmd_allocations <= 20,
            "{cmd_allocations} allocations for 20,000 command packages"
        );
        assert!(
            echo_allocations <= 20,
            "{echo_allocations} allocations for 5,000 echo packages"
        );
        println!(
            "allocations in steady state: command {cmd_allocations} / 20000 packages, echo {echo_allocations} / 5000"
        );
        host.shutdown().await;
    });
}
