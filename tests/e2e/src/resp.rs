//! A minimal Redis client (RESP2 over a fresh loopback connection per
//! command) for looking at what the product stored — `XLEN`, `XPENDING`,
//! `XINFO GROUPS` — and for writing entries the product's adapters would
//! never write (fields other than `v`, `k`, `m`, `s`).
//!
//! Independent of the product's own Redis adapter on purpose: an oracle
//! should not share the code it checks. Blocking, but every call is one
//! round trip to a local server with a short timeout.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// One RESP2 reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resp {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Resp>>),
}

impl Resp {
    fn text(&self) -> Option<String> {
        match self {
            Resp::Simple(s) => Some(s.clone()),
            Resp::Bulk(Some(b)) => Some(String::from_utf8_lossy(b).into_owned()),
            _ => None,
        }
    }
}

/// One stream entry as `XRANGE` lists it: its id and its field/value pairs
/// in stored order.
pub type RawEntry = (String, Vec<(Vec<u8>, Vec<u8>)>);

/// Redis on `127.0.0.1:<port>`, without a password.
#[derive(Debug, Clone, Copy)]
pub struct Probe {
    port: u16,
}

const IO_TIMEOUT: Duration = Duration::from_secs(2);

impl Probe {
    pub fn new(port: u16) -> Self {
        Self { port }
    }

    /// Sends one command; a Redis error reply is an `Err` too.
    ///
    /// # Errors
    /// Connection failures and error replies, as text.
    pub fn cmd(&self, args: &[&[u8]]) -> Result<Resp, String> {
        exchange(self.port, None, args)
    }

    /// The same server, each command sent as ACL user `user` (an `AUTH`
    /// first on the same connection).
    pub fn as_user(&self, user: &str, password: &str) -> UserProbe {
        UserProbe {
            port: self.port,
            user: user.to_string(),
            password: password.to_string(),
        }
    }

    /// `XLEN key`.
    ///
    /// # Errors
    /// As [`Probe::cmd`].
    pub fn xlen(&self, key: &str) -> Result<u64, String> {
        match self.cmd(&[b"XLEN", key.as_bytes()])? {
            Resp::Int(n) => Ok(n.max(0) as u64),
            r => Err(format!("XLEN answered {r:?}")),
        }
    }

    /// Entries pending in consumer group `sluice` of `key` (`XPENDING key sluice`).
    ///
    /// # Errors
    /// As [`Probe::cmd`]; `NOGROUP` when the group does not exist.
    pub fn pending(&self, key: &str) -> Result<u64, String> {
        match self.cmd(&[b"XPENDING", key.as_bytes(), b"sluice"])? {
            Resp::Array(Some(items)) => match items.first() {
                Some(Resp::Int(n)) => Ok((*n).max(0) as u64),
                other => Err(format!("XPENDING answered {other:?}")),
            },
            r => Err(format!("XPENDING answered {r:?}")),
        }
    }

    /// Names of the consumer groups of stream `key` (`XINFO GROUPS`).
    ///
    /// # Errors
    /// As [`Probe::cmd`]; an error when the stream does not exist.
    pub fn groups(&self, key: &str) -> Result<Vec<String>, String> {
        let Resp::Array(Some(groups)) = self.cmd(&[b"XINFO", b"GROUPS", key.as_bytes()])? else {
            return Err("XINFO GROUPS answered no array".into());
        };
        Ok(groups
            .iter()
            .filter_map(|g| match g {
                Resp::Array(Some(kv)) => kv
                    .chunks(2)
                    .find(|p| p[0].text().as_deref() == Some("name"))
                    .and_then(|p| p.get(1)?.text()),
                _ => None,
            })
            .collect())
    }

    /// `XRANGE key - +`: every entry of stream `key`.
    ///
    /// # Errors
    /// As [`Probe::cmd`]; an answer that is not a list of entries.
    pub fn xrange(&self, key: &str) -> Result<Vec<RawEntry>, String> {
        let Resp::Array(Some(entries)) = self.cmd(&[b"XRANGE", key.as_bytes(), b"-", b"+"])? else {
            return Err("XRANGE answered no array".into());
        };
        entries
            .into_iter()
            .map(|e| match e {
                Resp::Array(Some(mut parts)) if parts.len() == 2 => {
                    let fields = parts.pop();
                    let id = parts.pop().and_then(|i| i.text());
                    let Some(Resp::Array(Some(fields))) = fields else {
                        return Err("an XRANGE entry without fields".to_string());
                    };
                    let bytes = |r: Resp| match r {
                        Resp::Bulk(Some(b)) => Ok(b),
                        other => Err(format!("a field that is not a string: {other:?}")),
                    };
                    let mut pairs = vec![];
                    let mut it = fields.into_iter();
                    while let (Some(f), Some(v)) = (it.next(), it.next()) {
                        pairs.push((bytes(f)?, bytes(v)?));
                    }
                    Ok((id.unwrap_or_default(), pairs))
                }
                other => Err(format!("XRANGE entry {other:?}")),
            })
            .collect()
    }

    /// `XADD key * field value …` with arbitrary fields; returns the id.
    ///
    /// # Errors
    /// As [`Probe::cmd`].
    pub fn xadd(&self, key: &str, fields: &[(&[u8], &[u8])]) -> Result<String, String> {
        let mut args: Vec<&[u8]> = vec![b"XADD", key.as_bytes(), b"*"];
        for (f, v) in fields {
            args.push(f);
            args.push(v);
        }
        self.cmd(&args)?
            .text()
            .ok_or_else(|| "XADD returned no id".to_string())
    }
}

/// A [`Probe`] that authenticates as an ACL user before each command.
#[derive(Debug, Clone)]
pub struct UserProbe {
    port: u16,
    user: String,
    password: String,
}

impl UserProbe {
    /// `AUTH user password`, then one command; a Redis error reply to
    /// either is an `Err` (a refused command's `NOPERM …` text).
    ///
    /// # Errors
    /// Connection failures and error replies, as text.
    pub fn cmd(&self, args: &[&[u8]]) -> Result<Resp, String> {
        let auth: [&[u8]; 3] = [b"AUTH", self.user.as_bytes(), self.password.as_bytes()];
        exchange(self.port, Some(&auth), args)
    }
}

fn encode(args: &[&[u8]]) -> Vec<u8> {
    let mut req = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        req.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        req.extend_from_slice(a);
        req.extend_from_slice(b"\r\n");
    }
    req
}

/// One command on a fresh connection, after `auth` when given.
fn exchange(port: u16, auth: Option<&[&[u8]]>, args: &[&[u8]]) -> Result<Resp, String> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = TcpStream::connect_timeout(&addr, IO_TIMEOUT).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(IO_TIMEOUT))
        .and_then(|()| s.set_write_timeout(Some(IO_TIMEOUT)))
        .map_err(|e| e.to_string())?;
    let mut r = BufReader::new(s.try_clone().map_err(|e| e.to_string())?);
    if let Some(auth) = auth {
        s.write_all(&encode(auth)).map_err(|e| e.to_string())?;
        if let Resp::Error(e) = read(&mut r)? {
            return Err(e);
        }
    }
    s.write_all(&encode(args)).map_err(|e| e.to_string())?;
    match read(&mut r)? {
        Resp::Error(e) => Err(e),
        r => Ok(r),
    }
}

/// A RESP2 peer that reports `redis_version` of its choosing in `INFO`,
/// answers `PING` with `PONG` and any other command with `+OK`: a Redis of
/// a version the test machine cannot install, to see what the product
/// does with it. Lives on a thread of the test process until it exits.
#[derive(Debug, Clone, Copy)]
pub struct VersionedServer {
    port: u16,
}

impl VersionedServer {
    /// Listens on a free loopback port.
    ///
    /// # Panics
    /// When no port can be bound.
    pub fn start(version: &str) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
        let port = listener.local_addr().expect("a local address").port();
        let info = format!("# Server\r\nredis_version:{version}\r\nredis_mode:standalone\r\n");
        std::thread::spawn(move || {
            for socket in listener.incoming().flatten() {
                let info = info.clone();
                std::thread::spawn(move || Self::serve(socket, &info));
            }
        });
        Self { port }
    }

    fn serve(socket: TcpStream, info: &str) {
        let Ok(mut write) = socket.try_clone() else {
            return;
        };
        let mut read_half = BufReader::new(socket);
        while let Ok(Resp::Array(Some(args))) = read(&mut read_half) {
            let name = args.first().and_then(Resp::text).unwrap_or_default();
            let reply = match name.to_ascii_uppercase().as_str() {
                "INFO" => format!("${}\r\n{info}\r\n", info.len()),
                "PING" => "+PONG\r\n".to_string(),
                _ => "+OK\r\n".to_string(),
            };
            if write.write_all(reply.as_bytes()).is_err() {
                return;
            }
        }
    }

    /// `redis://[:password@]127.0.0.1:<port>/0`.
    pub fn url(&self, password: Option<&str>) -> String {
        let auth = password.map(|p| format!(":{p}@")).unwrap_or_default();
        format!("redis://{auth}127.0.0.1:{}/0", self.port)
    }
}

fn read(r: &mut impl BufRead) -> Result<Resp, String> {
    let mut line = String::new();
    r.read_line(&mut line).map_err(|e| e.to_string())?;
    let line = line.trim_end_matches(['\r', '\n']);
    let (kind, rest) = line.split_at(line.len().min(1));
    let int = || {
        rest.parse::<i64>()
            .map_err(|e| format!("bad RESP `{line}`: {e}"))
    };
    Ok(match kind {
        "+" => Resp::Simple(rest.to_string()),
        "-" => Resp::Error(rest.to_string()),
        ":" => Resp::Int(int()?),
        "$" => match int()? {
            n if n < 0 => Resp::Bulk(None),
            n => {
                let mut buf = vec![0; n as usize + 2];
                r.read_exact(&mut buf).map_err(|e| e.to_string())?;
                buf.truncate(n as usize);
                Resp::Bulk(Some(buf))
            }
        },
        "*" => match int()? {
            n if n < 0 => Resp::Array(None),
            n => Resp::Array(Some(
                (0..n).map(|_| read(r)).collect::<Result<Vec<_>, _>>()?,
            )),
        },
        _ => return Err(format!("unexpected RESP line `{line}`")),
    })
}
