//! Session timers (RFC 4028): a call whose dialog nobody refreshes is ended, so a far end that
//! vanished without a BYE does not leave a call up (and billed) for ever.
//!
//! Our INVITEs ask for [`ASKED`] (`Supported: timer`, `Session-Expires`, `Min-SE`); the 2xx
//! settles the interval and who refreshes. An INVITE we answer that asks for a timer gets one:
//! the caller refreshes if it supports timers, else we do. The refresher sends a re-INVITE
//! (same SDP) every half interval; the other side ends the call (BYE, `network_out_of_order`)
//! when no refresh came for the interval less a third (at most 32 s), as §10 says. What a
//! call does with its timer is in `timers.rs`.

use rsipstack::sip::{Header, Request, Response};
use std::time::Duration;

/// The interval our INVITEs ask for (RFC 4028's recommended 30 minutes).
pub const ASKED: Duration = Duration::from_secs(1800);

/// The least interval we take (RFC 4028's Min-SE default).
pub const MIN_SE: Duration = Duration::from_secs(90);

/// Shortest interval acted on, whatever the far end said (a far end asking for 1 s gets 2).
const FLOOR: Duration = Duration::from_secs(2);

/// A session timer agreed for a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionTimer {
    /// The session interval.
    pub interval: Duration,
    /// We send the refreshes (else we expect them).
    pub we_refresh: bool,
}

/// The headers of our INVITEs.
pub fn asked() -> Vec<Header> {
    vec![
        Header::Supported("timer".into()),
        Header::SessionExpires(ASKED.as_secs().to_string().into()),
        Header::MinSE(MIN_SE.as_secs().to_string().into()),
    ]
}

/// `Session-Expires: delta[;refresher=uac|uas]` -> (interval, refresher).
fn parse(value: &str) -> Option<(Duration, Option<String>)> {
    let mut parts = value.split(';');
    let secs: u64 = parts.next()?.trim().parse().ok()?;
    let refresher = parts.find_map(|p| {
        let (k, v) = p.split_once('=')?;
        (k.trim().eq_ignore_ascii_case("refresher")).then(|| v.trim().to_ascii_lowercase())
    });
    Some((Duration::from_secs(secs).max(FLOOR), refresher))
}

fn header<'a>(headers: &'a rsipstack::sip::Headers, name: &str) -> Option<&'a str> {
    headers.iter().find_map(|h| match h {
        Header::SessionExpires(v) if name == "Session-Expires" => Some(v.value()),
        Header::Supported(v) if name == "Supported" => Some(v.value()),
        Header::Other(n, v) if n.eq_ignore_ascii_case(name) => Some(v.as_str()),
        _ => None,
    })
}

/// The timer a 2xx to our INVITE settles (none: the far end does not do timers). Without a
/// refresher the UAC refreshes: us.
pub fn of_answer(resp: &Response) -> Option<SessionTimer> {
    let (interval, refresher) = parse(header(&resp.headers, "Session-Expires")?)?;
    Some(SessionTimer {
        interval,
        we_refresh: refresher.as_deref() != Some("uas"),
    })
}

/// For an INVITE we answer: the `Session-Expires` value of our 2xx and the timer (none when
/// the caller asks for none). Below [`MIN_SE`] we take [`MIN_SE`] (a 422 would only make the
/// caller ask again).
pub fn of_offer(req: &Request) -> Option<(String, SessionTimer)> {
    let (interval, refresher) = parse(header(&req.headers, "Session-Expires")?)?;
    let interval = interval.max(MIN_SE);
    let supports = header(&req.headers, "Supported")
        .is_some_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case("timer")));
    let refresher = match refresher.as_deref() {
        Some("uas") => "uas",
        Some("uac") => "uac",
        _ if supports => "uac",
        _ => "uas",
    };
    Some((
        format!("{};refresher={refresher}", interval.as_secs()),
        SessionTimer {
            interval,
            we_refresh: refresher == "uas",
        },
    ))
}

impl SessionTimer {
    /// How long without a refresh ends the session (§10: the interval less a third, at most
    /// 32 s less).
    pub fn expiry(self) -> Duration {
        self.interval - (self.interval / 3).min(Duration::from_secs(32))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_expires_values_parse_with_their_refresher() {
        assert_eq!(
            parse("1800;refresher=uas"),
            Some((Duration::from_secs(1800), Some("uas".into())))
        );
        assert_eq!(parse(" 90 "), Some((Duration::from_secs(90), None)));
        assert_eq!(parse("1"), Some((FLOOR, None)));
        assert_eq!(parse("soon"), None);
    }

    #[test]
    fn expiry_leaves_a_third_or_32_seconds() {
        let t = |s| SessionTimer {
            interval: Duration::from_secs(s),
            we_refresh: false,
        };
        assert_eq!(t(90).expiry(), Duration::from_secs(60));
        assert_eq!(t(1800).expiry(), Duration::from_secs(1768));
        assert_eq!(t(3).expiry(), Duration::from_secs(2));
    }
}
