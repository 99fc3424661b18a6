//! `burn`: a handler that burns CPU on request (`BURN <ms>` → `DONE` after spinning that long
//! on the session's thread), to show what isolation `runtime` protects the other instances from.

use std::time::{Duration, Instant};

use bytes::BytesMut;
use supersocket::filter::LineFilter;
use supersocket::{Service, Session};

/// Spins the CPU of the thread it runs on.
pub struct BurnService;

impl Service for BurnService {
    type Filter = LineFilter;

    fn filter(&self, max_package_length: usize) -> LineFilter {
        LineFilter::new(max_package_length)
    }

    async fn received(&self, session: &mut Session<'_>, line: BytesMut) {
        let text = String::from_utf8_lossy(&line);
        let Some(ms) = text.strip_prefix("BURN ").and_then(|ms| ms.trim().parse::<u64>().ok()) else {
            session.reply(b"ERR usage: BURN <ms>\r\n");
            return;
        };
        // A busy handler that never yields: the worst neighbour a runtime can have.
        let until = Instant::now() + Duration::from_millis(ms.min(1000));
        while Instant::now() < until {
            std::hint::spin_loop();
        }
        session.reply(b"DONE\r\n");
    }
}
