//! The store of a streamed answer, as an ingress reads it: the entries of
//! `sluice:{ns/p}:r:async:<handle>` page by page, each verified (MAC,
//! kind, address, sender) before it is used; the first answer among them
//! is kept, since pages read to catch up pass it by.

use sluice_crds::InterfacePlan;
use sluice_platform::{BackendError, Envelope, Rejection};

use crate::state::AppState;
use crate::stream_caller::{Caller, Offered, ROOM};
use crate::waiters::ReplySenders;

/// One page of a store: the entries that verified, and whether the read
/// was full (more may follow at once).
#[derive(Default)]
pub(crate) struct Page {
    pub entries: Vec<Envelope>,
    pub full: bool,
}

/// The verified entries of a stream's store, page by page.
pub(crate) struct Store {
    stream: String,
    address: String,
    cursor: Option<String>,
    senders: ReplySenders,
    /// The first answer read (pages read to catch up pass it by).
    answer: Option<Envelope>,
}

impl Store {
    pub fn new(s: &AppState, it: &InterfacePlan, address: &str) -> Self {
        Self {
            stream: s.keys.reply(address),
            address: address.to_string(),
            cursor: None,
            senders: ReplySenders::of(it),
            answer: None,
        }
    }

    /// Reads from the start again.
    pub fn rewind(&mut self) {
        self.cursor = None;
    }

    /// The answer, if the store holds one: read on to the end, passing the
    /// chunks met on to `caller`.
    pub async fn answer(&mut self, s: &AppState, caller: &mut Caller) -> Option<Envelope> {
        while self.answer.is_none() {
            let page = match self.page(s).await {
                Ok(Some(page)) if !page.entries.is_empty() || page.full => page,
                _ => break,
            };
            for env in page.entries {
                if env.is_chunk() && matches!(caller.offer(env).await, Offered::Gone) {
                    return None;
                }
            }
        }
        self.answer.take()
    }

    /// The next entries that verify and come from a group that may send
    /// them; `None` when the store does not exist.
    pub async fn page(&mut self, s: &AppState) -> Result<Option<Page>, BackendError> {
        let Some(got) = s
            .replies
            .read_after(&self.stream, self.cursor.as_deref(), ROOM)
            .await?
        else {
            return Ok(None);
        };
        let mut page = Page {
            entries: Vec::with_capacity(got.len()),
            full: got.len() == ROOM,
        };
        for (id, entry) in got {
            self.cursor = Some(id);
            match s.verifier.verify_stored_reply(&entry, &self.address).await {
                Ok(r) if self.senders.accepts(&r.from, &r.envelope) => {
                    if !r.envelope.is_chunk() && self.answer.is_none() {
                        self.answer = Some(r.envelope.clone());
                    }
                    page.entries.push(r.envelope);
                }
                Ok(_) => s.verifier.count_rejection(Rejection::WrongSender),
                Err(e) => tracing::debug!(error = %e, "stored chunk refused"),
            }
        }
        Ok(Some(page))
    }
}
