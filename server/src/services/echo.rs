//! `echo`: every byte received is sent back unchanged (no framing).

use bytes::BytesMut;

use crate::context::Session;
use crate::filter::PassthroughFilter;
use crate::service::Service;

/// Sends back whatever arrives.
#[derive(Debug, Clone, Copy, Default)]
pub struct EchoService;

impl Service for EchoService {
    type Filter = PassthroughFilter;

    fn filter(&self, _max_package_length: usize) -> PassthroughFilter {
        PassthroughFilter
    }

    async fn received(&self, session: &mut Session<'_>, package: BytesMut) {
        session.reply(&package);
    }
}
