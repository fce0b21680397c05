//! Why a stream entry was refused: the reasons the verification chain
//! (`signing`) gives and the metrics count (`sluice_envelopes_rejected_total`).
//!
//! It must not carry anything of the entry: a reason is a label, never a
//! payload or key material.

/// Why an entry was refused. Each reason is counted; none executes anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("entry exceeds the size limit")]
    Oversized,
    #[error("unsupported format version")]
    BadVersion,
    #[error("unknown key id")]
    UnknownKid,
    #[error("no key for this kind and group under a known kid")]
    MissingKey,
    #[error("MAC does not verify")]
    BadMac,
    #[error("message does not decode")]
    Malformed,
    #[error("timestamp is in the future beyond the clock skew")]
    FromFuture,
    #[error("deadline has passed")]
    Expired,
    #[error("deadline beyond the pipeline's longest timeout")]
    FarDeadline,
    #[error("nonce already seen on another entry")]
    Replay,
    #[error("envelope of the wrong kind")]
    WrongKind,
    #[error("envelope for another destination")]
    WrongDestination,
    #[error("reply from a group that does not answer this request")]
    WrongSender,
}

impl Rejection {
    /// The metric label.
    pub fn reason(self) -> &'static str {
        match self {
            Rejection::Oversized => "oversized",
            Rejection::BadVersion => "bad_version",
            Rejection::UnknownKid => "unknown_kid",
            Rejection::MissingKey => "missing_key",
            Rejection::BadMac => "bad_mac",
            Rejection::Malformed => "malformed",
            Rejection::FromFuture => "from_future",
            Rejection::Expired => "expired",
            Rejection::FarDeadline => "far_deadline",
            Rejection::Replay => "replay",
            Rejection::WrongKind => "wrong_kind",
            Rejection::WrongDestination => "wrong_destination",
            Rejection::WrongSender => "wrong_sender",
        }
    }
}
