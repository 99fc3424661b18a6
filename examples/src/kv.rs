//! `kv`: an in-memory key-value store per instance, over a binary protocol.
//!
//! Every frame, both ways, is `[op: u8][length: u16 big endian][payload: length bytes]`, cut by
//! the library's [`FixedHeaderFilter`]. Requests:
//! - `S` set: payload `key \0 value` → `K` with an empty payload, or `E` "full" past `max_keys`
//! - `G` get: payload `key` → `V` with the value, or `N` with an empty payload
//! - `D` delete: payload `key` → `K`, or `N`
//! - `C` count: empty payload → `V` with the number of keys as decimal text
//!
//! Anything else → `E` with a message. Options: `max_keys` (default 1000).

use std::collections::HashMap;
use std::sync::Mutex;

use bytes::BytesMut;
use serde::Deserialize;
use supersocket::filter::{Endian, FixedHeaderFilter, LengthCounts};
use supersocket::{Service, ServiceContext, Session};

/// Bytes before the payload.
const HEADER: usize = 3;

/// Type-specific `options` of a `kv` server.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KvOptions {
    /// Most keys the store holds.
    #[serde(default = "default_max_keys")]
    pub max_keys: usize,
}

fn default_max_keys() -> usize {
    1000
}

/// One instance's store.
pub struct KvService {
    entries: Mutex<HashMap<Vec<u8>, Vec<u8>>>,
    max_keys: usize,
}

impl KvService {
    /// The factory registered with the host builder: reads and checks the options.
    pub fn from_context(context: &ServiceContext<'_>) -> Result<Self, String> {
        let options: KvOptions = context.options()?;
        if options.max_keys == 0 {
            return Err("options.max_keys must be at least 1".into());
        }
        Ok(Self {
            entries: Mutex::new(HashMap::new()),
            max_keys: options.max_keys,
        })
    }

    fn apply(&self, op: u8, payload: &[u8]) -> (u8, Vec<u8>) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        match op {
            b'S' => {
                let Some(split) = payload.iter().position(|&b| b == 0) else {
                    return (b'E', b"set needs key\\0value".to_vec());
                };
                let (key, value) = (&payload[..split], &payload[split + 1..]);
                if !entries.contains_key(key) && entries.len() >= self.max_keys {
                    return (b'E', b"full".to_vec());
                }
                entries.insert(key.to_vec(), value.to_vec());
                (b'K', Vec::new())
            }
            b'G' => match entries.get(payload) {
                Some(value) => (b'V', value.clone()),
                None => (b'N', Vec::new()),
            },
            b'D' => match entries.remove(payload) {
                Some(_) => (b'K', Vec::new()),
                None => (b'N', Vec::new()),
            },
            b'C' => (b'V', entries.len().to_string().into_bytes()),
            _ => (b'E', b"unknown op".to_vec()),
        }
    }
}

impl Service for KvService {
    type Filter = FixedHeaderFilter;

    fn filter(&self, max_package_length: usize) -> FixedHeaderFilter {
        FixedHeaderFilter::new(1, 2, Endian::Big, LengthCounts::Body, max_package_length)
    }

    async fn received(&self, session: &mut Session<'_>, frame: BytesMut) {
        let (op, reply) = self.apply(frame[0], &frame[HEADER..]);
        let length = u16::try_from(reply.len()).unwrap_or(u16::MAX);
        session.reply(&[op]);
        session.reply(&length.to_be_bytes());
        session.reply(&reply[..usize::from(length)]);
    }
}
