//! Isolation `runtime` keeps a CPU-burning handler from slowing the instances on the host's
//! shared runtime. It compares latencies, so it runs alone in its own test binary (cargo runs
//! test binaries one after another), away from the other tests' load.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use supersocket_tests::net::{LineClient, connect, echo_roundtrip};
use supersocket_tests::{HostOptions, HostProcess, example};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cpu_burning_runtime_instance_does_not_slow_a_shared_one() {
    let mut options = HostOptions::new(
        r#"
        [[servers]]
        name = "Burner"
        type = "burn"
        isolation = "runtime"
        threads = 1
        listeners = [{ ip = "Loopback", port = 0 }]

        [[servers]]
        name = "Echo"
        type = "echo"
        listeners = [{ ip = "Loopback", port = 0 }]
        "#,
    );
    options.program = example("kv-server");
    let host = HostProcess::start_with(options);
    let mut echo = connect(host.port("Echo", 0).await).await;
    let median = |mut samples: Vec<Duration>| {
        samples.sort();
        samples[samples.len() / 2]
    };
    let mut quiet = Vec::new();
    for _ in 0..300 {
        let began = Instant::now();
        echo_roundtrip(&mut echo, b"latency").await;
        quiet.push(began.elapsed());
    }
    let quiet = median(quiet);

    let burning = Arc::new(AtomicBool::new(true));
    let burner_port = host.port("Burner", 0).await;
    let burners: Vec<_> = (0..4)
        .map(|_| {
            let burning = burning.clone();
            tokio::spawn(async move {
                let mut burner = LineClient::connect(burner_port).await;
                let mut burns = 0;
                while burning.load(Ordering::SeqCst) {
                    assert_eq!(burner.request("BURN 20").await, "DONE");
                    burns += 1;
                }
                burns
            })
        })
        .collect();
    // Measure once the burners are busy: four of their requests have started and finished.
    host.wait_server("Burner", Duration::from_secs(10), |s| {
        s["total_packages"].as_u64() >= Some(4)
    })
    .await;
    let mut loaded = Vec::new();
    for _ in 0..300 {
        let began = Instant::now();
        echo_roundtrip(&mut echo, b"latency").await;
        loaded.push(began.elapsed());
    }
    let loaded = median(loaded);
    burning.store(false, Ordering::SeqCst);
    let mut burns = 0;
    for burner in burners {
        burns += burner.await.unwrap();
    }
    assert!(burns >= 4, "the burners burned ({burns} requests)");
    // A floor of 200 µs keeps scheduler noise on a loaded 2-core machine from deciding.
    let bound = (quiet * 2).max(Duration::from_micros(200));
    assert!(
        loaded <= bound,
        "echo p50 {loaded:?} while a runtime instance burns CPU, quiet {quiet:?}"
    );
}
