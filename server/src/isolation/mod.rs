//! Process isolation: an instance run by a child agent process (`supersocketd agent`),
//! supervised and restarted by the host, driven over a unix control channel.
//!
//! Layout: `channel` frames messages and passes listening sockets; `supervisor` is the host
//! side (spawn, hand over the sockets, restart with back-off, stop); `agent` is the child's
//! main.

pub(crate) mod agent;
pub(crate) mod channel;
pub(crate) mod supervisor;
