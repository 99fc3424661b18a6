//! Process isolation: an instance run by a child agent process (`supersocketd agent`),
//! supervised and restarted by the host, driven over a unix stream channel.
//!
//! Layout: `frame` encodes the channel's frames; `link` is one end of a channel (requests with
//! deadlines, batched writes); `remote` carries out an instance's operations across a link;
//! `serve` answers the other side's operations; `view` keeps agents told of the host's
//! instances; `spawn` starts agent processes; `supervisor` is the host side (the launcher of
//! `process` instances), `handover` what it gives each agent (config and listening sockets,
//! and their live changes); `agent` is the child's main.
//!
//! Every operation crosses at most two links (agent, host, agent), is submitted in the order
//! its sender made it, and ends within a deadline: done, or an error the sender sees.

pub(crate) mod agent;
mod frame;
mod handover;
mod link;
mod remote;
mod serve;
pub(crate) mod spawn;
pub(crate) mod supervisor;
pub(crate) mod view;

#[cfg(feature = "fuzzing")]
pub(crate) use frame::check_splitting as check_frames;
