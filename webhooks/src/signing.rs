//! Webhook bodies and signatures.
//!
//! Two signature schemes are sent on every delivery, both HMAC-SHA256 keyed with the UTF-8
//! bytes of the customer's `webhook_secret`:
//! - the seed's: `X-VoIPBIN-Signature: sha256=<hex HMAC(timestamp + "." + body)>` with the
//!   signed timestamp in `X-VoIPBIN-Timestamp`;
//! - Standard Webhooks: `webhook-signature: v1,<base64 HMAC(id + "." + timestamp + "." +
//!   body)>` with `webhook-id` and `webhook-timestamp` (unix seconds). Standard Webhooks
//!   libraries take the same key written as `whsec_` + base64(secret).
//!
//! During a secret rotation's grace period both secrets sign, and each signature header holds
//! both values separated by a space (current first), so a receiver still configured with the
//! previous secret keeps verifying.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use vbin_event_schema::PublishedEvent;

type HmacSha256 = Hmac<Sha256>;

/// The secrets that sign a delivery: the current one and, during a rotation's grace period,
/// the previous one.
#[derive(Clone, Debug)]
pub struct Secrets<'a> {
    /// The customer's current `webhook_secret`.
    pub current: &'a str,
    /// The secret it replaced, while still within its grace period.
    pub previous: Option<&'a str>,
}

impl Secrets<'_> {
    fn keys(&self) -> impl Iterator<Item = &[u8]> {
        std::iter::once(self.current.as_bytes()).chain(self.previous.map(str::as_bytes))
    }
}

/// The JSON body of an event's webhook: `{"id", "type", "created", "data": resource}`.
pub fn body_for(event: &PublishedEvent) -> Vec<u8> {
    /// The body, the resource copied in as written.
    #[derive(serde::Serialize)]
    struct Body<'a> {
        id: uuid::Uuid,
        #[serde(rename = "type")]
        kind: &'a str,
        created: chrono::DateTime<chrono::Utc>,
        data: &'a serde_json::value::RawValue,
    }
    serde_json::to_vec(&Body {
        id: event.event_id,
        kind: &event.event_type,
        created: event.timestamp,
        data: &event.resource,
    })
    .expect("the body serializes")
}

fn hmac(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes keys of any length");
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().to_vec()
}

/// The seed's signature value for one key: `sha256=<hex>`.
fn seed_signature(key: &[u8], timestamp: &str, body: &[u8]) -> String {
    format!(
        "sha256={}",
        hex::encode(hmac(key, &[timestamp.as_bytes(), b".", body]))
    )
}

/// The Standard Webhooks signature value for one key: `v1,<base64>`.
fn standard_signature(key: &[u8], id: &str, timestamp: &str, body: &[u8]) -> String {
    let mac = hmac(
        key,
        &[id.as_bytes(), b".", timestamp.as_bytes(), b".", body],
    );
    format!("v1,{}", STANDARD.encode(mac))
}

/// Every header of a delivery of `body` (the event `event_id` of type `event_type`), signed
/// at `unix_seconds`.
pub fn signed_headers(
    secrets: &Secrets<'_>,
    event_id: &str,
    event_type: &str,
    unix_seconds: i64,
    body: &[u8],
) -> Vec<(&'static str, String)> {
    let ts = unix_seconds.to_string();
    let seed: Vec<String> = secrets
        .keys()
        .map(|k| seed_signature(k, &ts, body))
        .collect();
    let standard: Vec<String> = secrets
        .keys()
        .map(|k| standard_signature(k, event_id, &ts, body))
        .collect();
    vec![
        ("content-type", "application/json".to_string()),
        ("x-voipbin-event", event_type.to_string()),
        ("x-voipbin-timestamp", ts.clone()),
        ("x-voipbin-signature", seed.join(" ")),
        ("webhook-id", event_id.to_string()),
        ("webhook-timestamp", ts),
        ("webhook-signature", standard.join(" ")),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use vbin_event_schema::CallEvent;

    fn header<'a>(h: &'a [(&str, String)], name: &str) -> &'a str {
        &h.iter().find(|(n, _)| *n == name).unwrap().1
    }

    /// The test vector published by Standard Webhooks (standard-webhooks/spec, the libraries'
    /// tests): key `whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw`, i.e. the base64-decoded bytes.
    #[test]
    fn standard_webhooks_published_vector() {
        let key = STANDARD.decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let sig = standard_signature(
            &key,
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            "1614265330",
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    /// RFC 4231 test case 2: HMAC-SHA256 keyed "Jefe" of "what do ya want for nothing?"
    /// (fed in two parts, as the signatures are).
    #[test]
    fn hmac_matches_rfc_4231() {
        assert_eq!(
            hex::encode(hmac(b"Jefe", &[b"what do ya want ", b"for nothing?"])),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn headers_sign_timestamp_dot_body_with_the_secret_bytes() {
        let secret = "s".repeat(32);
        let body = br#"{"id":"e1"}"#;
        let h = signed_headers(
            &Secrets {
                current: &secret,
                previous: None,
            },
            "e1",
            CallEvent::CALL_CREATED,
            1_700_000_000,
            body,
        );
        assert_eq!(header(&h, "x-voipbin-timestamp"), "1700000000");
        assert_eq!(header(&h, "webhook-timestamp"), "1700000000");
        assert_eq!(header(&h, "x-voipbin-event"), CallEvent::CALL_CREATED);
        let want = hex::encode(hmac(secret.as_bytes(), &[b"1700000000.{\"id\":\"e1\"}"]));
        assert_eq!(header(&h, "x-voipbin-signature"), format!("sha256={want}"));
        let want = STANDARD.encode(hmac(secret.as_bytes(), &[b"e1.1700000000.{\"id\":\"e1\"}"]));
        assert_eq!(header(&h, "webhook-signature"), format!("v1,{want}"));
    }

    #[test]
    fn rotation_sends_both_signatures_current_first() {
        let (new, old) = ("n".repeat(32), "o".repeat(32));
        let both = signed_headers(
            &Secrets {
                current: &new,
                previous: Some(&old),
            },
            "e1",
            CallEvent::CALL_CREATED,
            1,
            b"{}",
        );
        let only = |s: &str| {
            signed_headers(
                &Secrets {
                    current: s,
                    previous: None,
                },
                "e1",
                CallEvent::CALL_CREATED,
                1,
                b"{}",
            )
        };
        for name in ["x-voipbin-signature", "webhook-signature"] {
            let want = format!(
                "{} {}",
                header(&only(&new), name),
                header(&only(&old), name)
            );
            assert_eq!(header(&both, name), want);
        }
    }
}
