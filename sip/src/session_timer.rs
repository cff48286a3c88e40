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

/// For an INVITE we answer: the timer (none when the caller asks for none). Below [`MIN_SE`]
/// we take [`MIN_SE`] (a 422 would only make the caller ask again).
pub fn of_offer(req: &Request) -> Option<SessionTimer> {
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
    Some(SessionTimer {
        interval,
        we_refresh: refresher == "uas",
    })
}

impl SessionTimer {
    /// The headers of our 2xx to the INVITE that set it up (we are its UAS): who refreshes,
    /// and `Require: timer` when the caller does (RFC 4028 9).
    pub fn answering(self) -> Vec<Header> {
        let refresher = if self.we_refresh { "uas" } else { "uac" };
        let mut headers = Vec::with_capacity(2);
        if !self.we_refresh {
            headers.push(Header::Require("timer".into()));
        }
        headers.push(Header::SessionExpires(
            format!("{};refresher={refresher}", self.interval.as_secs()).into(),
        ));
        headers
    }

    /// `Session-Expires` of a refresh (a re-INVITE or UPDATE) and of our 2xx to one: its
    /// sender, the UAC of that transaction, refreshes.
    pub fn refreshing(self) -> Header {
        Header::SessionExpires(format!("{};refresher=uac", self.interval.as_secs()).into())
    }

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

    fn invite(extra: &str) -> Request {
        let text = format!(
            "INVITE sip:+15557770001@127.0.0.1 SIP/2.0\r\n\
             Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-1\r\n\
             From: <sip:+15550009999@127.0.0.1>;tag=a\r\nTo: <sip:+15557770001@127.0.0.1>\r\n\
             Call-ID: c1\r\nCSeq: 1 INVITE\r\n{extra}Content-Length: 0\r\n\r\n"
        );
        Request::try_from(text.as_str()).unwrap()
    }

    #[test]
    fn a_caller_that_supports_timers_refreshes_one_that_does_not_is_refreshed() {
        let names = |t: SessionTimer| -> Vec<String> {
            t.answering().iter().map(|h| h.to_string()).collect()
        };
        let t = of_offer(&invite("Supported: timer\r\nSession-Expires: 120\r\n")).unwrap();
        assert_eq!(
            (t.interval, t.we_refresh),
            (Duration::from_secs(120), false)
        );
        assert_eq!(
            names(t),
            ["Require: timer", "Session-Expires: 120;refresher=uac"]
        );
        // Below Min-SE, from a caller without timer support: 90 s, refreshed by us.
        let t = of_offer(&invite("Session-Expires: 30\r\n")).unwrap();
        assert_eq!((t.interval, t.we_refresh), (MIN_SE, true));
        assert_eq!(names(t), ["Session-Expires: 90;refresher=uas"]);
        assert_eq!(
            t.refreshing().to_string(),
            "Session-Expires: 90;refresher=uac"
        );
        assert_eq!(of_offer(&invite("")), None);
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
