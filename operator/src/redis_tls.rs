//! The TLS material of managed Redis: a CA the operator makes for each
//! pipeline, and the server certificate that CA signs for Redis's Service
//! names. Both live in the `P-redis` Secret; the Redis pod mounts the
//! server certificate and key, every other pod only the CA certificate.
//!
//! ```text
//! P-redis keys     ca.crt  ca.key  tls.crt  tls.key  tls.renew-after
//! made             absent, or unusable ─▶ a new CA and a new certificate
//! renewed          after tls.renew-after (2/3 of the certificate's life)
//!                  ─▶ a new key and certificate from the same CA: clients,
//!                  which trust the CA, never notice
//! Redis reloads    the files on disk every time the operator applies the
//!                  users (crate::redis_users: CONFIG SET tls-cert-file …)
//! ```
//!
//! The CA is valid for ten years and is not renewed; clients need not
//! present certificates (`tls-auth-clients no`): they authenticate with
//! their ACL password, which TLS now keeps off the wire. Key bytes never
//! appear in logs or errors; [`TlsMaterial`] has no `Debug`.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rand::rngs::OsRng;
use rand::RngCore;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SerialNumber,
};

use crate::names;

/// Keys of the `P-redis` Secret that hold the material.
pub const CA_CERT_KEY: &str = "ca.crt";
pub const CA_KEY_KEY: &str = "ca.key";
pub const CERT_KEY: &str = "tls.crt";
pub const KEY_KEY: &str = "tls.key";
pub const RENEW_AFTER_KEY: &str = "tls.renew-after";

/// How long the CA is valid.
const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Certificates start this long before they are made: clocks of the
/// operator and of clients may disagree.
const BACKDATE: Duration = Duration::from_secs(3600);

/// What went wrong making a certificate. Never carries key bytes.
#[derive(Debug, thiserror::Error)]
#[error("cannot make the managed Redis TLS material: {0}")]
pub struct TlsError(String);

fn err(e: impl std::fmt::Display) -> TlsError {
    TlsError(e.to_string())
}

/// A CA and the server certificate it signed, as PEM, and when the
/// certificate is to be replaced. No `Debug`: it holds private keys.
#[derive(Clone, PartialEq, Eq)]
pub struct TlsMaterial {
    pub ca_cert: String,
    ca_key: String,
    pub cert: String,
    key: String,
    pub renew_after: DateTime<Utc>,
}

/// What the stored data holds.
pub enum Stored {
    Usable(TlsMaterial),
    Absent,
    /// Present but not usable (edited, truncated): the reason, without
    /// any of the content.
    Unusable(String),
}

/// A short digest of a PEM CA, for pod template annotations.
pub fn digest(pem: &str) -> String {
    crate::hash::hex_prefix(pem.as_bytes())
}

/// The names Redis answers to: its client Service in every spelling a pod
/// may use, its pod behind the headless Service, and loopback for the
/// probes inside its own pod.
pub fn hosts(pipeline: &str, namespace: &str) -> Vec<String> {
    let svc = names::redis(pipeline);
    let headless = names::redis_headless(pipeline);
    vec![
        svc.clone(),
        format!("{svc}.{namespace}"),
        format!("{svc}.{namespace}.svc"),
        format!("{svc}.{namespace}.svc.cluster.local"),
        format!("{svc}-0.{headless}.{namespace}.svc"),
        format!("{svc}-0.{headless}.{namespace}.svc.cluster.local"),
        "localhost".into(),
        "127.0.0.1".into(),
    ]
}

fn when(t: DateTime<Utc>) -> Result<time::OffsetDateTime, TlsError> {
    time::OffsetDateTime::from_unix_timestamp(t.timestamp()).map_err(err)
}

fn later(t: DateTime<Utc>, d: Duration) -> Result<DateTime<Utc>, TlsError> {
    chrono::Duration::from_std(d)
        .ok()
        .and_then(|d| t.checked_add_signed(d))
        .ok_or_else(|| TlsError("a validity past the calendar".into()))
}

fn earlier(t: DateTime<Utc>, d: Duration) -> Result<DateTime<Utc>, TlsError> {
    chrono::Duration::from_std(d)
        .ok()
        .and_then(|d| t.checked_sub_signed(d))
        .ok_or_else(|| TlsError("a validity before the calendar".into()))
}

fn whole_seconds(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp(t.timestamp(), 0).unwrap_or(t)
}

/// 16 random bytes, positive as a DER integer.
fn serial() -> SerialNumber {
    let mut b = [0u8; 16];
    OsRng.fill_bytes(&mut b);
    b[0] &= 0x7f;
    SerialNumber::from_slice(&b)
}

/// The CA's parameters. Its name is fixed per pipeline, so the same
/// parameters sign renewals with the stored key.
fn ca_params(pipeline: &str, namespace: &str) -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "sluice");
    dn.push(
        DnType::CommonName,
        format!("sluice managed Redis CA {namespace}/{pipeline}"),
    );
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p
}

impl TlsMaterial {
    /// A new CA and a server certificate valid for `lifetime` from `now`.
    ///
    /// # Errors
    /// Key generation or signing failed, or `lifetime` is past the calendar.
    pub fn fresh(
        pipeline: &str,
        namespace: &str,
        now: DateTime<Utc>,
        lifetime: Duration,
    ) -> Result<Self, TlsError> {
        let ca_key = KeyPair::generate().map_err(err)?;
        let mut params = ca_params(pipeline, namespace);
        params.not_before = when(earlier(now, BACKDATE)?)?;
        params.not_after = when(later(now, CA_LIFETIME)?)?;
        params.serial_number = Some(serial());
        let ca_cert = params.self_signed(&ca_key).map_err(err)?.pem();
        let ca = Self {
            ca_cert,
            ca_key: ca_key.serialize_pem(),
            cert: String::new(),
            key: String::new(),
            renew_after: now,
        };
        ca.renewed(pipeline, namespace, now, lifetime)
    }

    /// The same CA with a new server key and certificate, valid for
    /// `lifetime` from `now` and due for renewal after two thirds of it.
    ///
    /// # Errors
    /// The stored CA key does not parse; signing failed.
    pub fn renewed(
        &self,
        pipeline: &str,
        namespace: &str,
        now: DateTime<Utc>,
        lifetime: Duration,
    ) -> Result<Self, TlsError> {
        let ca_key = KeyPair::from_pem(&self.ca_key)
            .map_err(|_| TlsError("the CA key does not parse".into()))?;
        let issuer = Issuer::new(ca_params(pipeline, namespace), ca_key);
        let key = KeyPair::generate().map_err(err)?;
        let mut params = CertificateParams::new(hosts(pipeline, namespace)).map_err(err)?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, names::redis(pipeline));
        params.distinguished_name = dn;
        params.not_before = when(earlier(now, BACKDATE)?)?;
        params.not_after = when(later(now, lifetime)?)?;
        params.serial_number = Some(serial());
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key, &issuer).map_err(err)?.pem();
        Ok(Self {
            ca_cert: self.ca_cert.clone(),
            ca_key: self.ca_key.clone(),
            cert,
            key: key.serialize_pem(),
            // Whole seconds: what the Secret stores.
            renew_after: whole_seconds(later(now, lifetime.saturating_mul(2) / 3)?),
        })
    }

    /// Whether the server certificate verifies against the CA, as the
    /// runtime's client (rustls) checks it, for Redis's Service name at
    /// `at`: the pair belongs together and neither has expired by then.
    pub fn verifies(&self, pipeline: &str, namespace: &str, at: DateTime<Utc>) -> bool {
        let host = format!("{}.{namespace}.svc", names::redis(pipeline));
        verify(&self.ca_cert, &self.cert, &host, at).is_ok()
    }

    /// Whether the certificate is to be replaced at `now`.
    pub fn due(&self, now: DateTime<Utc>) -> bool {
        now >= self.renew_after
    }

    /// The material in `data` (a `P-redis` Secret's text data). Parsing is
    /// shallow: that each piece is PEM of the right kind and the CA key
    /// loads; whether the certificate verifies against the CA is
    /// [`Self::verifies`].
    pub fn from_data(data: &BTreeMap<String, String>) -> Stored {
        let keys = [CA_CERT_KEY, CA_KEY_KEY, CERT_KEY, KEY_KEY, RENEW_AFTER_KEY];
        let present: Vec<_> = keys.iter().map(|k| data.get(*k)).collect();
        if present.iter().all(Option::is_none) {
            return Stored::Absent;
        }
        let [Some(ca_cert), Some(ca_key), Some(cert), Some(key), Some(renew_after)] = present[..]
        else {
            return Stored::Unusable("some of its TLS keys are missing".into());
        };
        let Ok(renew_after) = DateTime::parse_from_rfc3339(renew_after.trim()) else {
            return Stored::Unusable(format!("{RENEW_AFTER_KEY} is not an RFC 3339 time"));
        };
        for (k, v, label) in [
            (CA_CERT_KEY, ca_cert, "CERTIFICATE"),
            (CERT_KEY, cert, "CERTIFICATE"),
            (CA_KEY_KEY, ca_key, "PRIVATE KEY"),
            (KEY_KEY, key, "PRIVATE KEY"),
        ] {
            if !v
                .trim_start()
                .starts_with(&format!("-----BEGIN {label}-----"))
            {
                return Stored::Unusable(format!("{k} is not a PEM {label}"));
            }
        }
        if KeyPair::from_pem(ca_key).is_err() {
            return Stored::Unusable(format!("{CA_KEY_KEY} does not parse"));
        }
        Stored::Usable(Self {
            ca_cert: ca_cert.clone(),
            ca_key: ca_key.clone(),
            cert: cert.clone(),
            key: key.clone(),
            renew_after: renew_after.with_timezone(&Utc),
        })
    }

    /// The Secret data this material is stored as.
    pub fn to_data(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            (CA_CERT_KEY.to_string(), self.ca_cert.clone()),
            (CA_KEY_KEY.to_string(), self.ca_key.clone()),
            (CERT_KEY.to_string(), self.cert.clone()),
            (KEY_KEY.to_string(), self.key.clone()),
            (
                RENEW_AFTER_KEY.to_string(),
                self.renew_after
                    .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            ),
        ])
    }

    /// Fixed stand-in material for snapshots of rendered objects: PEM in
    /// shape only, it signs and verifies nothing.
    #[doc(hidden)]
    pub fn placeholder(renew_after: DateTime<Utc>) -> Self {
        let pem = |label: &str, what: &str| {
            format!("-----BEGIN {label}-----\n{what}\n-----END {label}-----\n")
        };
        Self {
            ca_cert: pem("CERTIFICATE", "golden-ca-certificate"),
            ca_key: pem("PRIVATE KEY", "golden-ca-key"),
            cert: pem("CERTIFICATE", "golden-server-certificate"),
            key: pem("PRIVATE KEY", "golden-server-key"),
            renew_after,
        }
    }
}

/// Whether the PEM certificate `cert` verifies against the PEM CA
/// `ca_pem` for `host` at `at`, as the runtime's client (rustls) checks it.
fn verify(ca_pem: &str, cert: &str, host: &str, at: DateTime<Utc>) -> Result<(), String> {
    use rustls::client::danger::ServerCertVerifier;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        let c = c.map_err(|_| "the CA is not PEM".to_string())?;
        roots.add(c).map_err(|e| e.to_string())?;
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let verifier =
        rustls::client::WebPkiServerVerifier::builder_with_provider(roots.into(), provider)
            .build()
            .map_err(|e| e.to_string())?;
    let cert = CertificateDer::from_pem_slice(cert.as_bytes())
        .map_err(|_| "the certificate is not PEM".to_string())?;
    let name = ServerName::try_from(host.to_string()).map_err(|e| e.to_string())?;
    let secs = u64::try_from(at.timestamp()).map_err(|e| e.to_string())?;
    verifier
        .verify_server_cert(
            &cert,
            &[],
            &name,
            &[],
            UnixTime::since_unix_epoch(Duration::from_secs(secs)),
        )
        .map(|_| ())
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(24 * 3600);

    fn verifies(
        ca_pem: &str,
        m: &TlsMaterial,
        host: &str,
        at: DateTime<Utc>,
    ) -> Result<(), String> {
        verify(ca_pem, &m.cert, host, at)
    }

    #[test]
    fn the_certificate_verifies_for_every_name_a_pod_uses_and_no_other() {
        let now = Utc::now();
        let m = TlsMaterial::fresh("orders", "shop", now, 90 * DAY).unwrap();
        for host in hosts("orders", "shop") {
            verifies(&m.ca_cert, &m, &host, now).unwrap_or_else(|e| panic!("{host}: {e}"));
        }
        for host in ["orders-redis.other.svc", "example.com", "10.0.0.1"] {
            assert!(
                verifies(&m.ca_cert, &m, host, now).is_err(),
                "{host} accepted"
            );
        }
        assert!(
            verifies(
                &m.ca_cert,
                &m,
                "orders-redis.shop.svc",
                now + chrono::Duration::days(91)
            )
            .is_err(),
            "an expired certificate is refused"
        );
        let other = TlsMaterial::fresh("orders", "shop", now, 90 * DAY).unwrap();
        assert!(
            verifies(&other.ca_cert, &m, "orders-redis.shop.svc", now).is_err(),
            "another pipeline's CA does not vouch for it"
        );
    }

    #[test]
    fn renewal_keeps_the_ca_and_replaces_key_and_certificate() {
        let now = Utc::now();
        let m = TlsMaterial::fresh("orders", "shop", now, 90 * DAY).unwrap();
        assert!(!m.due(now + chrono::Duration::days(59)));
        assert!(m.due(now + chrono::Duration::days(60)));
        let later = now + chrono::Duration::days(60);
        let r = m.renewed("orders", "shop", later, 90 * DAY).unwrap();
        assert_eq!(r.ca_cert, m.ca_cert, "clients keep trusting the same CA");
        assert_ne!(r.cert, m.cert);
        assert_ne!(r.key, m.key);
        verifies(
            &m.ca_cert,
            &r,
            "orders-redis.shop.svc",
            later + chrono::Duration::days(80),
        )
        .expect("the renewed certificate verifies with the CA clients hold");
        assert_eq!(
            r.renew_after.timestamp(),
            (later + chrono::Duration::days(60)).timestamp()
        );
    }

    #[test]
    fn stored_material_round_trips_and_damage_is_named_without_content() {
        let m = TlsMaterial::fresh("orders", "shop", Utc::now(), 90 * DAY).unwrap();
        let data = m.to_data();
        assert!(matches!(TlsMaterial::from_data(&data), Stored::Usable(back) if back == m));
        assert!(matches!(
            TlsMaterial::from_data(&BTreeMap::new()),
            Stored::Absent
        ));
        let mut partial = data.clone();
        partial.remove(KEY_KEY);
        assert!(matches!(
            TlsMaterial::from_data(&partial),
            Stored::Unusable(_)
        ));
        let mut garbled = data.clone();
        garbled.insert(
            CA_KEY_KEY.into(),
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n".into(),
        );
        match TlsMaterial::from_data(&garbled) {
            Stored::Unusable(why) => {
                assert!(why.contains(CA_KEY_KEY), "{why}");
                assert!(!why.contains("AAAA"), "{why}");
            }
            _ => panic!("a CA key that does not parse is unusable"),
        }
        let mut late = data;
        late.insert(RENEW_AFTER_KEY.into(), "soon".into());
        assert!(matches!(TlsMaterial::from_data(&late), Stored::Unusable(_)));
    }
}
