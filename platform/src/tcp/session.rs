//! One authenticated connection of the tcp profile: the mutual handshake and
//! the sealed, numbered frames that follow it.
//!
//! ```text
//! worker ─▶ hub   hello: "SLT2" kid group client-nonce
//! hub ─▶ worker   "SLT2" server-nonce HMAC(K, "server" ‖ transcript)
//! worker ─▶ hub   HMAC(K, "client" ‖ transcript)
//! hub ─▶ worker   sealed frame 0 (empty): accepted
//! then            [len u32][payload][HMAC(direction key, seq ‖ payload)]
//! ```
//!
//! `K` is derived (HMAC, its own label) from the reply key of the worker's
//! group under `kid`: of the worker processes only that group's holds it
//! (a request key is also held by every group sending to it), and the hub
//! (the ingress, holding the whole ring in this profile) derives it. So a
//! worker can connect as its own group only. The transcript names the
//! pipeline, kid, group and both nonces, so a proof is good for one
//! connection only. Each side proves it holds `K` before it learns anything:
//! a process that took over the port of a dead peer can neither read work
//! nor hand in answers. Frames carry no sequence number on the wire; each
//! side counts them per direction, and the MAC covers the count, so a
//! dropped, repeated, reordered or reflected frame fails its MAC and ends
//! the connection. The length is checked before the frame is read and the
//! MAC before it is decoded. No error text carries key bytes.

use hmac::{Hmac, KeyInit, Mac};
use rand::RngCore;
use sha2::digest::zeroize::Zeroizing;
use sha2::Sha256;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::envelope::Kind;
use crate::keyring::{valid_group, valid_kid, KeyRing};

type HmacSha256 = Hmac<Sha256>;

const MAGIC: &[u8; 4] = b"SLT2";
/// A frame whose length arrived must arrive whole within this long.
const FRAME_BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
const NONCE: usize = 32;
const MAC: usize = 32;

/// Why a connection ended or was refused. Never carries key bytes.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
    /// The handshake failed: the text says which check.
    #[error("handshake refused: {0}")]
    Refused(&'static str),
    /// A frame broke the protocol (too large, MAC mismatch, out of order).
    #[error("frame refused: {0}")]
    Frame(&'static str),
}

/// Seals or opens the frames of one direction, counting them. It keeps
/// its key only as an HMAC state (keyed once, wiped when dropped), never
/// as key bytes.
struct Direction {
    keyed: HmacSha256,
    seq: u64,
}

impl Direction {
    fn new(key: &[u8; 32]) -> Self {
        Self {
            keyed: HmacSha256::new_from_slice(key).expect("HMAC takes any key length"),
            seq: 0,
        }
    }

    fn mac(&self, payload: &[u8]) -> HmacSha256 {
        let mut m = self.keyed.clone();
        m.update(&self.seq.to_be_bytes());
        m.update(payload);
        m
    }
}

/// The sending half's sealer.
pub(crate) struct Sealer(Direction);

impl Sealer {
    /// Appends `payload` as the next frame to `out`.
    pub fn seal_into(&mut self, payload: &[u8], out: &mut Vec<u8>) {
        let len = u32::try_from(payload.len() + MAC).unwrap_or(u32::MAX);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(payload);
        out.extend_from_slice(&self.0.mac(payload).finalize().into_bytes());
        self.0.seq += 1;
    }
}

/// The receiving half's opener.
pub(crate) struct Opener {
    dir: Direction,
    max_payload: usize,
    buf: Vec<u8>,
}

impl Opener {
    /// The next frame's payload: its length checked before it is read, its
    /// MAC (over the frame count) before it is returned.
    ///
    /// # Errors
    /// I/O, a frame over the limit, or a MAC mismatch.
    pub async fn open(&mut self, r: &mut (impl AsyncRead + Unpin)) -> Result<&[u8], SessionError> {
        let len = r.read_u32().await? as usize;
        if len < MAC {
            return Err(SessionError::Frame("shorter than its MAC"));
        }
        if len - MAC > self.max_payload {
            return Err(SessionError::Frame("larger than the frame limit"));
        }
        // The buffer grows as bytes arrive, not from the length alone; a
        // frame begun must be finished within FRAME_BODY_TIMEOUT.
        self.buf.clear();
        let mut taken = (&mut *r).take(len as u64);
        let body = taken.read_to_end(&mut self.buf);
        match tokio::time::timeout(FRAME_BODY_TIMEOUT, body).await {
            Err(_) => {
                return Err(SessionError::Frame(
                    "a frame's bytes did not arrive in time",
                ))
            }
            Ok(read) => {
                read?;
            }
        }
        if self.buf.len() != len {
            return Err(SessionError::Io(std::io::ErrorKind::UnexpectedEof.into()));
        }
        let (payload, tag) = self.buf.split_at(len - MAC);
        // `verify_slice` compares in constant time.
        if self.dir.mac(payload).verify_slice(tag).is_err() {
            return Err(SessionError::Frame("MAC mismatch"));
        }
        self.dir.seq += 1;
        // Shrink a buffer a rare large frame grew, so an idle connection
        // holds little.
        if self.buf.capacity() > 1 << 20 && len < 1 << 16 {
            self.buf.shrink_to(1 << 16);
        }
        Ok(&self.buf[..len - MAC])
    }
}

/// Bytes of frames gathered into one write at most.
const WRITE_BATCH: usize = 256 << 10;

/// Seals and writes the payloads of `rx`, gathering those already queued
/// into one write, until `rx` closes, `stop` is cancelled, a write fails or
/// (with `timeout`) takes longer; then cancels `stop`, so the connection's
/// other half ends too.
pub(crate) async fn write_frames(
    mut w: impl AsyncWrite + Unpin,
    mut sealer: Sealer,
    mut rx: tokio::sync::mpsc::Receiver<Vec<u8>>,
    stop: tokio_util::sync::CancellationToken,
    timeout: Option<std::time::Duration>,
) {
    let mut buf = Vec::with_capacity(16 << 10);
    loop {
        let first = tokio::select! {
            _ = stop.cancelled() => break,
            p = rx.recv() => match p { Some(p) => p, None => break },
        };
        buf.clear();
        sealer.seal_into(&first, &mut buf);
        while buf.len() < WRITE_BATCH {
            match rx.try_recv() {
                Ok(p) => sealer.seal_into(&p, &mut buf),
                Err(_) => break,
            }
        }
        let written = match timeout {
            Some(t) => tokio::time::timeout(t, w.write_all(&buf))
                .await
                .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into())),
            None => w.write_all(&buf).await,
        };
        if written.is_err() {
            break;
        }
        // Give back what a rare large batch grew.
        if buf.capacity() > 1 << 20 {
            buf = Vec::with_capacity(16 << 10);
        }
    }
    stop.cancel();
}

/// Who the peer is and the two halves' keys.
pub(crate) struct Session {
    pub sealer: Sealer,
    pub opener: Opener,
}

/// Names no key: the keys stay out of every diagnostic.
impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("sent", &self.sealer.0.seq)
            .field("received", &self.opener.dir.seq)
            .finish_non_exhaustive()
    }
}

/// What both sides hash: the pipeline, kid, group and both nonces.
fn transcript(pipeline: &str, kid: &str, group: &str, cn: &[u8], sn: &[u8]) -> Vec<u8> {
    let mut t = Vec::with_capacity(160);
    for part in [
        b"sluice-tcp/2".as_slice(),
        pipeline.as_bytes(),
        kid.as_bytes(),
        group.as_bytes(),
        cn,
        sn,
    ] {
        t.extend_from_slice(&(part.len() as u32).to_be_bytes());
        t.extend_from_slice(part);
    }
    t
}

fn derive(key: &[u8; 32], label: &[u8], transcript: &[u8]) -> HmacSha256 {
    let mut m = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
    m.update(label);
    m.update(transcript);
    m
}

/// A key made from `key`, wiped when dropped.
fn derive_key(key: &[u8; 32], label: &[u8], transcript: &[u8]) -> Zeroizing<[u8; 32]> {
    Zeroizing::new(
        derive(key, label, transcript)
            .finalize()
            .into_bytes()
            .into(),
    )
}

fn session(key: &[u8; 32], t: &[u8], client: bool, max_payload: usize) -> Session {
    let c2s = Direction::new(&derive_key(key, b"c2s", t));
    let s2c = Direction::new(&derive_key(key, b"s2c", t));
    let (send, recv) = if client { (c2s, s2c) } else { (s2c, c2s) };
    Session {
        sealer: Sealer(send),
        opener: Opener {
            dir: recv,
            max_payload,
            buf: Vec::new(),
        },
    }
}

/// The handshake key of `group`: its reply key under `kid`, through a label
/// of its own so no handshake value is ever an envelope's MAC.
fn handshake_key(
    ring: &KeyRing,
    kid: &str,
    pipeline: &str,
    group: &str,
) -> Option<Zeroizing<[u8; 32]>> {
    let reply = ring.key(kid, Kind::Reply, pipeline, group)?;
    Some(derive_key(&reply, b"sluice-tcp/2 handshake key", &[]))
}

fn nonce() -> [u8; NONCE] {
    let mut n = [0u8; NONCE];
    rand::thread_rng().fill_bytes(&mut n);
    n
}

/// The worker's side: proves it holds `group`'s request key under the
/// ring's current kid and checks that the hub does too.
///
/// # Errors
/// The key is not held, the hub's proof is wrong, or I/O failed.
pub(crate) async fn connect<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut S,
    ring: &KeyRing,
    pipeline: &str,
    group: &str,
    max_payload: usize,
) -> Result<Session, SessionError> {
    let kid = ring.current();
    let key = handshake_key(ring, kid, pipeline, group).ok_or(SessionError::Refused(
        "this process lacks its group's reply key",
    ))?;
    let cn = nonce();
    let mut hello = Vec::with_capacity(4 + 2 + kid.len() + group.len() + NONCE);
    hello.extend_from_slice(MAGIC);
    hello.push(kid.len() as u8);
    hello.extend_from_slice(kid.as_bytes());
    hello.push(group.len() as u8);
    hello.extend_from_slice(group.as_bytes());
    hello.extend_from_slice(&cn);
    io.write_all(&hello).await?;
    io.flush().await?;

    let mut reply = [0u8; 4 + NONCE + MAC];
    io.read_exact(&mut reply).await?;
    if &reply[..4] != MAGIC {
        return Err(SessionError::Refused(
            "the peer does not speak the sluice tcp protocol",
        ));
    }
    let sn = &reply[4..4 + NONCE];
    let t = transcript(pipeline, kid, group, &cn, sn);
    if derive(&key, b"server", &t)
        .verify_slice(&reply[4 + NONCE..])
        .is_err()
    {
        return Err(SessionError::Refused(
            "the hub could not prove it holds the key",
        ));
    }
    let proof = derive_key(&key, b"client", &t);
    io.write_all(&proof[..]).await?;
    io.flush().await?;
    let mut s = session(&key, &t, true, max_payload);
    // The hub's first frame says it accepted the proof.
    let welcome = s.opener.open(io).await?;
    if !welcome.is_empty() {
        return Err(SessionError::Frame("the welcome frame is not empty"));
    }
    Ok(s)
}

/// The hub's side: reads the hello, checks `allow(group)`, proves it holds
/// the key, then checks the worker's proof. Returns the session and the
/// worker's group.
///
/// # Errors
/// A malformed hello, a group not allowed, a kid or key not held, a wrong
/// proof, or I/O.
pub(crate) async fn accept<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut S,
    ring: &KeyRing,
    pipeline: &str,
    allow: impl Fn(&str) -> bool,
    max_payload: usize,
) -> Result<(Session, String), SessionError> {
    let mut magic = [0u8; 4];
    io.read_exact(&mut magic).await?;
    if &magic != MAGIC {
        // "SLT" and another digit: a worker of another sluice release.
        return Err(SessionError::Refused(if magic[..3] == MAGIC[..3] {
            "another version of the sluice tcp protocol (ingress and workers must be one release)"
        } else {
            "not the sluice tcp protocol"
        }));
    }
    let kid = read_name(io).await?;
    let group = read_name(io).await?;
    let mut cn = [0u8; NONCE];
    io.read_exact(&mut cn).await?;
    if !valid_kid(&kid) || !valid_group(&group) {
        return Err(SessionError::Refused("malformed kid or group"));
    }
    if !allow(&group) {
        return Err(SessionError::Refused("not a worker group of this pipeline"));
    }
    let key =
        handshake_key(ring, &kid, pipeline, &group).ok_or(SessionError::Refused("unknown kid"))?;
    let sn = nonce();
    let t = transcript(pipeline, &kid, &group, &cn, &sn);
    let mut reply = Vec::with_capacity(4 + NONCE + MAC);
    reply.extend_from_slice(MAGIC);
    reply.extend_from_slice(&sn);
    reply.extend_from_slice(&derive(&key, b"server", &t).finalize().into_bytes());
    io.write_all(&reply).await?;
    io.flush().await?;
    let mut proof = [0u8; MAC];
    io.read_exact(&mut proof).await?;
    if derive(&key, b"client", &t).verify_slice(&proof).is_err() {
        return Err(SessionError::Refused(
            "the worker could not prove it holds the key",
        ));
    }
    let mut s = session(&key, &t, false, max_payload);
    let mut welcome = Vec::with_capacity(4 + MAC);
    s.sealer.seal_into(&[], &mut welcome);
    io.write_all(&welcome).await?;
    io.flush().await?;
    Ok((s, group))
}

/// A name of at most 255 bytes, UTF-8.
async fn read_name(io: &mut (impl AsyncRead + Unpin)) -> Result<String, SessionError> {
    let n = io.read_u8().await? as usize;
    let mut b = vec![0u8; n];
    io.read_exact(&mut b).await?;
    String::from_utf8(b).map_err(|_| SessionError::Refused("a name is not UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: &str = "default/hello";

    async fn pair(
        worker_ring: &KeyRing,
        hub_ring: &KeyRing,
        group: &str,
    ) -> (
        Result<Session, SessionError>,
        Result<(Session, String), SessionError>,
    ) {
        let (mut a, mut b) = tokio::io::duplex(4096);
        let hub_ring = hub_ring.clone();
        let hub = tokio::spawn(async move {
            let r = accept(&mut b, &hub_ring, P, |g| g == "work", 1024).await;
            // A refusal closes the connection; an acceptance keeps it open
            // until the worker has read the welcome.
            let keep = r.is_ok().then_some(b);
            (r, keep)
        });
        let w = connect(&mut a, worker_ring, P, group, 1024).await;
        drop(a);
        let (h, _b) = hub.await.unwrap();
        (w, h)
    }

    fn ring_of(byte: u8) -> KeyRing {
        let raw = [("k1".to_string(), vec![byte; 32])].into_iter().collect();
        KeyRing::from_raw("k1", &raw).unwrap()
    }

    /// HMAC-SHA256 of `parts`, computed here on its own.
    fn hmac(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
        let mut m = HmacSha256::new_from_slice(key).unwrap();
        for part in parts {
            m.update(part);
        }
        m.finalize().into_bytes().to_vec()
    }

    #[test]
    fn frames_are_sealed_as_the_wire_format_says() {
        // A frame: its length (payload + MAC, u32 big-endian), the payload,
        // and HMAC(direction key, frame count as u64 big-endian ‖ payload),
        // the direction key being HMAC(session key, "c2s" or "s2c" ‖
        // transcript).
        let key = [7u8; 32];
        let t = transcript(P, "k1", "work", &[1; NONCE], &[2; NONCE]);
        let c2s = hmac(&key, &[b"c2s", &t]);
        let s2c = hmac(&key, &[b"s2c", &t]);
        let frame = |dir: &[u8], seq: u64, payload: &[u8]| {
            let mut f = u32::try_from(payload.len() + MAC)
                .unwrap()
                .to_be_bytes()
                .to_vec();
            f.extend_from_slice(payload);
            f.extend(hmac(dir, &[&seq.to_be_bytes(), payload]));
            f
        };
        let mut worker = session(&key, &t, true, 64);
        let mut hub = session(&key, &t, false, 64);
        let mut out = vec![];
        worker.sealer.seal_into(b"hi", &mut out);
        worker.sealer.seal_into(b"", &mut out);
        let mut want = frame(&c2s, 0, b"hi");
        want.extend(frame(&c2s, 1, b""));
        assert_eq!(out, want);
        let mut out = vec![];
        hub.sealer.seal_into(b"back", &mut out);
        assert_eq!(out, frame(&s2c, 0, b"back"));
    }

    #[tokio::test]
    async fn both_sides_holding_the_key_agree_and_frames_flow_both_ways() {
        let ring = KeyRing::ephemeral();
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        let hub_ring = ring.clone();
        let hub = tokio::spawn(async move {
            let (mut s, group) = accept(&mut b, &hub_ring, P, |g| g == "work", 1024)
                .await
                .unwrap();
            assert_eq!(group, "work");
            let got = s.opener.open(&mut b).await.unwrap().to_vec();
            let mut out = vec![];
            s.sealer.seal_into(&[got, b"!".to_vec()].concat(), &mut out);
            b.write_all(&out).await.unwrap();
            b
        });
        let mut s = connect(&mut a, &ring, P, "work", 1024).await.unwrap();
        let mut out = vec![];
        s.sealer.seal_into(b"ping", &mut out);
        a.write_all(&out).await.unwrap();
        let _b = hub.await.unwrap();
        assert_eq!(s.opener.open(&mut a).await.unwrap(), b"ping!");
    }

    #[tokio::test]
    async fn a_worker_with_an_unknown_kid_is_refused() {
        let (w, h) = pair(&KeyRing::ephemeral(), &KeyRing::ephemeral(), "work").await;
        assert!(
            matches!(h, Err(SessionError::Refused("unknown kid"))),
            "{h:?}"
        );
        assert!(matches!(w, Err(SessionError::Io(_))), "{w:?}");
    }

    #[tokio::test]
    async fn a_hub_with_other_key_bytes_under_the_same_kid_is_not_trusted() {
        let (w, h) = pair(&ring_of(1), &ring_of(2), "work").await;
        assert!(
            matches!(
                w,
                Err(SessionError::Refused(
                    "the hub could not prove it holds the key"
                ))
            ),
            "{w:?}"
        );
        assert!(h.is_err());
    }

    #[tokio::test]
    async fn a_worker_that_cannot_prove_the_key_is_refused() {
        let ring = ring_of(1);
        let (mut a, mut b) = tokio::io::duplex(4096);
        let hub = tokio::spawn(async move {
            accept(&mut b, &ring, P, |g| g == "work", 1024)
                .await
                .map(|_| ())
        });
        let mut hello = b"SLT2".to_vec();
        hello.extend_from_slice(&[2, b'k', b'1', 4, b'w', b'o', b'r', b'k']);
        hello.extend_from_slice(&[9; 32]);
        a.write_all(&hello).await.unwrap();
        let mut reply = [0u8; 4 + NONCE + MAC];
        a.read_exact(&mut reply).await.unwrap();
        a.write_all(&[0u8; 32]).await.unwrap();
        assert!(matches!(
            hub.await.unwrap(),
            Err(SessionError::Refused(
                "the worker could not prove it holds the key"
            ))
        ));
    }

    #[tokio::test]
    async fn a_worker_of_another_protocol_version_is_told_so() {
        let ring = ring_of(1);
        for (hello, why) in [
            (b"SLT1".to_vec(), "another version"),
            (b"GET ".to_vec(), "not the sluice tcp protocol"),
        ] {
            let (mut a, mut b) = tokio::io::duplex(4096);
            let ring = ring.clone();
            let hub = tokio::spawn(async move {
                accept(&mut b, &ring, P, |g| g == "work", 1024)
                    .await
                    .map(|_| ())
            });
            a.write_all(&hello).await.unwrap();
            match hub.await.unwrap() {
                Err(SessionError::Refused(m)) => assert!(m.contains(why), "{m}"),
                other => panic!("{other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn a_group_the_hub_does_not_serve_is_refused() {
        let ring = KeyRing::ephemeral();
        let (w, h) = pair(&ring, &ring, "other").await;
        assert!(matches!(
            h,
            Err(SessionError::Refused("not a worker group of this pipeline"))
        ));
        assert!(w.is_err());
    }

    #[tokio::test]
    async fn a_replayed_reordered_or_oversized_frame_ends_the_connection() {
        let key = [7u8; 32];
        let t = transcript(P, "k", "work", &[1; 32], &[2; 32]);
        let mut tx = session(&key, &t, true, 64);
        let mut rx = session(&key, &t, false, 64);
        let mut first = vec![];
        tx.sealer.seal_into(b"one", &mut first);
        let mut second = vec![];
        tx.sealer.seal_into(b"two", &mut second);

        // In order: both open.
        let mut wire = &[first.clone(), second.clone()].concat()[..];
        assert_eq!(rx.opener.open(&mut wire).await.unwrap(), b"one");
        assert_eq!(rx.opener.open(&mut wire).await.unwrap(), b"two");

        // The first again (a replay): its count is behind.
        let mut wire = &first[..];
        assert!(matches!(
            rx.opener.open(&mut wire).await,
            Err(SessionError::Frame("MAC mismatch"))
        ));

        // Reordered: the second before the first.
        let mut rx = session(&key, &t, false, 64);
        let mut wire = &second[..];
        assert!(rx.opener.open(&mut wire).await.is_err());

        // Reflected: a frame the receiver's own direction sealed.
        let mut back = session(&key, &t, false, 64);
        let mut out = vec![];
        back.sealer.seal_into(b"one", &mut out);
        let mut rx = session(&key, &t, false, 64);
        assert!(rx.opener.open(&mut &out[..]).await.is_err());

        // Over the limit: refused from the length alone.
        let mut big = vec![];
        let mut tx = session(&key, &t, true, 64);
        tx.sealer.seal_into(&[0u8; 65], &mut big);
        let mut rx = session(&key, &t, false, 64);
        assert!(matches!(
            rx.opener.open(&mut &big[..4]).await,
            Err(SessionError::Frame("larger than the frame limit"))
        ));

        // A flipped payload bit.
        let mut tx = session(&key, &t, true, 64);
        let mut out = vec![];
        tx.sealer.seal_into(b"abc", &mut out);
        out[5] ^= 1;
        let mut rx = session(&key, &t, false, 64);
        assert!(rx.opener.open(&mut &out[..]).await.is_err());
    }
}
