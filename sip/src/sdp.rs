//! SDP offer/answer for a call's audio (RFC 3264), on `sdp-types`: what we offer (the
//! trunk's codecs we can carry, telephone-event for RFC 4733 keys) and what the far end's
//! answer (or offer) settles: where to send RTP, which codec, which payload type carries keys.

use sdp_types::{Attribute, Connection, Media, Origin, Session, Time};
use std::net::{IpAddr, SocketAddr};
use vbin_event_schema::Codec;

/// The payload type we offer telephone-event (RFC 4733) with.
pub const DTMF_PT: u8 = 101;

/// The dynamic payload type we offer Opus with.
pub const OPUS_PT: u8 = 111;

/// Codecs the RTP path carries: G.711 both laws, G.722 and Opus.
pub const CARRIED: [Codec; 4] = Codec::ALL;

/// The payload type our offers give a codec (static ones by RFC 3551, Opus a dynamic one).
pub fn payload_type(codec: Codec) -> u8 {
    match codec {
        Codec::Pcmu => 0,
        Codec::Pcma => 8,
        Codec::G722 => 9,
        Codec::Opus => OPUS_PT,
    }
}

/// A codec's encoding name in an rtpmap: name, RTP clock and channels. G.722's clock is 8000
/// though it samples at 16 kHz (RFC 3551 4.5.2); Opus's is always 48000/2 (RFC 7587).
pub fn encoding(codec: Codec) -> &'static str {
    match codec {
        Codec::Pcmu => "PCMU/8000",
        Codec::Pcma => "PCMA/8000",
        Codec::G722 => "G722/8000",
        Codec::Opus => "opus/48000/2",
    }
}

/// The codec a static payload type names when no rtpmap says otherwise.
fn codec_of_static_pt(pt: u8) -> Option<Codec> {
    [Codec::Pcmu, Codec::Pcma, Codec::G722]
        .into_iter()
        .find(|c| payload_type(*c) == pt)
}

/// One format of an audio stream: a codec on a payload type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Format {
    /// The codec.
    pub codec: Codec,
    /// The payload type it has in the SDP that declared it.
    pub pt: u8,
}

impl Format {
    /// `codec` on the payload type of our offers.
    pub fn ours(codec: Codec) -> Self {
        Self {
            codec,
            pt: payload_type(codec),
        }
    }
}

/// Which way media flows, from the SDP's direction attribute.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Both ways (the default).
    SendRecv,
    /// The far end only sends (it put us on hold: we keep sending nothing useful).
    SendOnly,
    /// The far end only receives.
    RecvOnly,
    /// No media (hold).
    Inactive,
}

impl Direction {
    /// Its SDP attribute.
    pub fn attribute(self) -> &'static str {
        match self {
            Direction::SendRecv => "sendrecv",
            Direction::SendOnly => "sendonly",
            Direction::RecvOnly => "recvonly",
            Direction::Inactive => "inactive",
        }
    }

    /// Whether a side with this direction sends media.
    pub fn sends(self) -> bool {
        matches!(self, Direction::SendRecv | Direction::SendOnly)
    }

    /// Ours, answering an offer of theirs in this direction (RFC 3264 6.1): a far end that
    /// only sends (hold) gets `recvonly`, one that only receives `sendonly`.
    pub fn answer(self) -> Self {
        match self {
            Direction::SendOnly => Direction::RecvOnly,
            Direction::RecvOnly => Direction::SendOnly,
            other => other,
        }
    }
}

/// What an offer/answer settled for the audio stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Negotiated {
    /// Where to send RTP (latching may correct it once packets arrive).
    pub remote: SocketAddr,
    /// The codec we send with: the first of theirs we both have.
    pub codec: Codec,
    /// Its payload type in their SDP (the one to send with).
    pub pt: u8,
    /// Every format of theirs we both have, in their order (the first is `codec` on `pt`):
    /// an answerer may send any of its answer's.
    pub formats: Vec<Format>,
    /// The payload type of telephone-event, if the far end takes RFC 4733 keys.
    pub dtmf_pt: Option<u8>,
    /// The far end's direction.
    pub direction: Direction,
}

/// Why an SDP could not be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SdpError {
    /// It does not parse.
    #[error("the SDP does not parse: {0}")]
    Parse(String),
    /// It has no audio stream we can use (no common codec, or the stream is rejected).
    #[error("no common audio codec (offered {offered}, theirs {theirs})")]
    NoCodec {
        /// What we offered.
        offered: String,
        /// What the far end has.
        theirs: String,
    },
    /// No address to send to.
    #[error("the SDP names no usable address")]
    NoAddress,
}

/// An SDP for audio on `ip:port` with `formats` (in order of preference) and, with `dtmf_pt`,
/// telephone-event on that payload type ([`DTMF_PT`] in our offers, the offerer's in an
/// answer), both ways.
pub fn describe(
    ip: IpAddr,
    port: u16,
    formats: &[Format],
    dtmf_pt: Option<u8>,
    session_id: u64,
    version: u64,
) -> String {
    describe_as(
        ip,
        port,
        formats,
        dtmf_pt,
        session_id,
        version,
        Direction::SendRecv,
    )
}

/// [`describe`] with our `direction`.
pub fn describe_as(
    ip: IpAddr,
    port: u16,
    formats: &[Format],
    dtmf_pt: Option<u8>,
    session_id: u64,
    version: u64,
    direction: Direction,
) -> String {
    let mut fmts: Vec<String> = formats.iter().map(|f| f.pt.to_string()).collect();
    fmts.extend(dtmf_pt.map(|p| p.to_string()));
    let mut media = Media::new(
        sdp_types::MediaType::Audio,
        port,
        sdp_types::TransportProto::RtpAvp,
        fmts.join(" "),
    );
    let attr = |a: &str, v: Option<String>| Attribute {
        attribute: a.into(),
        value: v,
    };
    for f in formats {
        media.attributes.push(attr(
            "rtpmap",
            Some(format!("{} {}", f.pt, encoding(f.codec))),
        ));
    }
    if let Some(pt) = dtmf_pt {
        media
            .attributes
            .push(attr("rtpmap", Some(format!("{pt} telephone-event/8000"))));
        media
            .attributes
            .push(attr("fmtp", Some(format!("{pt} 0-16"))));
    }
    media.attributes.push(attr("ptime", Some("20".into())));
    media.attributes.push(attr(direction.attribute(), None));
    let mut s = Session::new(
        Origin {
            username: Some("vbin".into()),
            sess_id: session_id.to_string(),
            sess_version: version,
            nettype: sdp_types::NetType::In,
            addrtype: if ip.is_ipv6() {
                sdp_types::AddrType::Ip6
            } else {
                sdp_types::AddrType::Ip4
            },
            unicast_address: ip.to_string(),
        },
        "vbin",
    );
    s.connection = Some(Connection::from_ip_addr(ip));
    s.times.push(Time {
        start_time: 0,
        stop_time: 0,
        repeats: vec![],
    });
    s.medias.push(media);
    let mut out = Vec::new();
    s.write(&mut out).expect("writing to a Vec");
    String::from_utf8(out).expect("SDP is ASCII")
}

/// What the far end's SDP (`theirs`, an answer to our offer of `ours`, or an offer we answer
/// with `ours`) settles: the first of its audio formats we carry and offered, in its order
/// (RFC 3264: the answerer's preference wins in an answer; as answerer we take the offerer's).
pub fn negotiate(theirs: &[u8], ours: &[Codec]) -> Result<Negotiated, SdpError> {
    let s = Session::parse(theirs).map_err(|e| SdpError::Parse(e.to_string()))?;
    let media = s
        .medias
        .iter()
        .find(|m| m.media == "audio" && m.port != 0)
        .ok_or_else(|| SdpError::NoCodec {
            offered: names(ours),
            theirs: "no audio stream".into(),
        })?;
    let pts: Vec<u8> = media
        .fmt
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect();
    // A dynamic payload type is named by its rtpmap; static ones may come without.
    let rtpmap = |pt: u8| -> Option<String> {
        media
            .attributes
            .iter()
            .filter(|a| a.attribute == "rtpmap")
            .filter_map(|a| a.value.as_deref())
            .find_map(|v| {
                let (p, name) = v.split_once(' ')?;
                (p.parse::<u8>().ok()? == pt).then(|| name.to_ascii_lowercase())
            })
    };
    let formats: Vec<Format> = pts
        .iter()
        .filter_map(|&pt| {
            let codec = match rtpmap(pt) {
                // By name and clock ("PCMU/8000", "PCMU/8000/1", "opus/48000/2"): the
                // channels are optional (RFC 4566 6).
                Some(name) => CARRIED.into_iter().find(|c| {
                    let want = encoding(*c).to_ascii_lowercase();
                    name.split('/').take(2).eq(want.split('/').take(2))
                })?,
                None => codec_of_static_pt(pt)?,
            };
            ours.contains(&codec).then_some(Format { codec, pt })
        })
        .collect();
    let Some(&Format { codec, pt }) = formats.first() else {
        return Err(SdpError::NoCodec {
            offered: names(ours),
            theirs: media.fmt.clone(),
        });
    };
    let dtmf_pt = pts
        .iter()
        .copied()
        .find(|&pt| rtpmap(pt).is_some_and(|n| n.starts_with("telephone-event/8000")));
    let address = media
        .connections
        .first()
        .or(s.connection.as_ref())
        .and_then(|c| {
            c.connection_address
                .split('/')
                .next()?
                .parse::<IpAddr>()
                .ok()
        })
        .ok_or(SdpError::NoAddress)?;
    // The media's direction wins over the session's (RFC 4566 6.7).
    let direction_of = |has: &dyn Fn(&str) -> bool| {
        [
            ("inactive", Direction::Inactive),
            ("sendonly", Direction::SendOnly),
            ("recvonly", Direction::RecvOnly),
            ("sendrecv", Direction::SendRecv),
        ]
        .into_iter()
        .find(|(a, _)| has(a))
        .map(|(_, d)| d)
    };
    let direction = direction_of(&|a| media.has_attribute(a))
        .or_else(|| direction_of(&|a| s.has_attribute(a)))
        .unwrap_or(Direction::SendRecv);
    // c=0.0.0.0 is the old way of putting a call on hold (RFC 2543).
    let direction = if address.is_unspecified() {
        Direction::Inactive
    } else {
        direction
    };
    Ok(Negotiated {
        remote: SocketAddr::new(address, media.port),
        codec,
        pt,
        formats,
        dtmf_pt,
        direction,
    })
}

fn names(codecs: &[Codec]) -> String {
    codecs
        .iter()
        .map(|c| c.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIPP_ANSWER: &str = "v=0\r\no=user1 53655765 2353687637 IN IP4 127.0.0.1\r\ns=-\r\n\
        c=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 6000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n";

    #[test]
    fn our_offer_parses_back_with_every_codec_and_keys() {
        let all = CARRIED.map(Format::ours);
        let sdp = describe(
            "192.0.2.7".parse().unwrap(),
            20_002,
            &all,
            Some(DTMF_PT),
            42,
            1,
        );
        assert!(
            sdp.contains("m=audio 20002 RTP/AVP 0 8 9 111 101\r\n"),
            "{sdp}"
        );
        assert!(sdp.contains("a=rtpmap:9 G722/8000"), "{sdp}");
        assert!(sdp.contains("a=rtpmap:111 opus/48000/2"), "{sdp}");
        assert!(sdp.contains("a=rtpmap:101 telephone-event/8000"), "{sdp}");
        assert!(sdp.contains("c=IN IP4 192.0.2.7"), "{sdp}");
        let n = negotiate(sdp.as_bytes(), &CARRIED).unwrap();
        assert_eq!(
            n,
            Negotiated {
                remote: "192.0.2.7:20002".parse().unwrap(),
                codec: Codec::Pcmu,
                pt: 0,
                formats: all.to_vec(),
                dtmf_pt: Some(DTMF_PT),
                direction: Direction::SendRecv,
            }
        );
    }

    #[test]
    fn sipps_answer_settles_pcmu_without_keys() {
        let n = negotiate(SIPP_ANSWER.as_bytes(), &CARRIED).unwrap();
        assert_eq!((n.codec, n.pt, n.dtmf_pt), (Codec::Pcmu, 0, None));
        assert_eq!(n.remote, "127.0.0.1:6000".parse().unwrap());
    }

    #[test]
    fn the_far_ends_order_and_dynamic_keys_are_taken() {
        let sdp = "v=0\r\no=- 1 1 IN IP4 198.51.100.2\r\ns=-\r\nt=0 0\r\n\
            m=audio 30000 RTP/AVP 9 8 0 96\r\nc=IN IP4 198.51.100.3\r\n\
            a=rtpmap:96 telephone-event/8000\r\na=sendonly\r\n";
        let n = negotiate(sdp.as_bytes(), &CARRIED).unwrap();
        assert_eq!((n.codec, n.pt, n.dtmf_pt), (Codec::G722, 9, Some(96)));
        assert_eq!(
            n.formats,
            [Codec::G722, Codec::Pcma, Codec::Pcmu].map(Format::ours)
        );
        assert_eq!(n.remote, "198.51.100.3:30000".parse().unwrap());
        assert_eq!(n.direction, Direction::SendOnly);
        // A trunk limited to PCMU takes PCMU.
        let n = negotiate(sdp.as_bytes(), &[Codec::Pcmu]).unwrap();
        assert_eq!(n.codec, Codec::Pcmu);
    }

    #[test]
    fn our_answer_keeps_the_offerers_payload_types() {
        let offer = "v=0\r\no=- 1 1 IN IP4 198.51.100.2\r\ns=-\r\nt=0 0\r\n\
            m=audio 30000 RTP/AVP 8 0 96\r\nc=IN IP4 198.51.100.3\r\n\
            a=rtpmap:96 telephone-event/8000\r\n";
        let n = negotiate(offer.as_bytes(), &CARRIED).unwrap();
        let ip = "192.0.2.7".parse().unwrap();
        let answer = describe(ip, 20_004, &n.formats[..1], n.dtmf_pt, 7, 1);
        assert!(
            answer.contains("m=audio 20004 RTP/AVP 8 96\r\n"),
            "{answer}"
        );
        assert!(
            answer.contains("a=rtpmap:96 telephone-event/8000"),
            "{answer}"
        );
        let back = negotiate(answer.as_bytes(), &CARRIED).unwrap();
        assert_eq!(
            (back.codec, back.pt, back.dtmf_pt),
            (Codec::Pcma, 8, Some(96))
        );
        // Without telephone-event in the offer, none in the answer.
        let answer = describe(ip, 20_004, &[Format::ours(Codec::Pcmu)], None, 7, 1);
        assert!(answer.contains("m=audio 20004 RTP/AVP 0\r\n"), "{answer}");
        assert!(!answer.contains("telephone-event"), "{answer}");
    }

    #[test]
    fn rtpmaps_with_or_without_channels_name_their_codec() {
        let offer = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\n\
            t=0 0\r\nm=audio 10000 RTP/AVP 9 0 97\r\na=rtpmap:9 G722/8000/1\r\n\
            a=rtpmap:0 PCMU/8000/1\r\na=rtpmap:97 opus/48000\r\n";
        let n = negotiate(offer.as_bytes(), &CARRIED).unwrap();
        assert_eq!(
            n.formats,
            [
                Format::ours(Codec::G722),
                Format::ours(Codec::Pcmu),
                Format {
                    codec: Codec::Opus,
                    pt: 97
                }
            ]
        );
        // A clock that is not the codec's is another codec.
        let wrong = offer.replace("G722/8000/1", "G722/16000/1");
        let n = negotiate(wrong.as_bytes(), &CARRIED).unwrap();
        assert_eq!(n.codec, Codec::Pcmu);
    }

    #[test]
    fn opus_on_the_offerers_dynamic_payload_type_is_answered_with_it() {
        // baresip's offer: Opus on 96 (its channels left out), G.722, G.711, keys on 101.
        let offer = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\n\
            t=0 0\r\nm=audio 10000 RTP/AVP 96 9 0 8 101\r\na=rtpmap:96 opus/48000\r\n\
            a=fmtp:96 stereo=1;sprop-stereo=1\r\na=rtpmap:9 G722/8000\r\n\
            a=rtpmap:101 telephone-event/8000\r\n";
        let n = negotiate(offer.as_bytes(), &CARRIED).unwrap();
        assert_eq!((n.codec, n.pt, n.dtmf_pt), (Codec::Opus, 96, Some(101)));
        let answer = describe(
            "192.0.2.7".parse().unwrap(),
            20_006,
            &n.formats[..1],
            n.dtmf_pt,
            7,
            1,
        );
        assert!(
            answer.contains("m=audio 20006 RTP/AVP 96 101\r\n"),
            "{answer}"
        );
        assert!(answer.contains("a=rtpmap:96 opus/48000/2"), "{answer}");
        // A trunk without Opus takes G.722, then G.711.
        let n = negotiate(offer.as_bytes(), &[Codec::Pcmu, Codec::G722]).unwrap();
        assert_eq!((n.codec, n.pt), (Codec::G722, 9));
        let n = negotiate(offer.as_bytes(), &[Codec::Pcma]).unwrap();
        assert_eq!((n.codec, n.pt), (Codec::Pcma, 8));
    }

    #[test]
    fn hold_is_answered_in_the_mirrored_direction() {
        let ip = "192.0.2.7".parse().unwrap();
        for (theirs, ours) in [
            (Direction::SendOnly, "a=recvonly"),
            (Direction::RecvOnly, "a=sendonly"),
            (Direction::Inactive, "a=inactive"),
            (Direction::SendRecv, "a=sendrecv"),
        ] {
            let sdp = describe_as(
                ip,
                20_004,
                &CARRIED.map(Format::ours),
                None,
                7,
                2,
                theirs.answer(),
            );
            assert!(sdp.contains(ours), "{sdp}");
            assert_eq!(
                negotiate(sdp.as_bytes(), &CARRIED).unwrap().direction,
                theirs.answer()
            );
        }
    }

    #[test]
    fn no_common_codec_or_a_rejected_stream_is_refused() {
        let g729 =
            "v=0\r\no=- 1 1 IN IP4 198.51.100.2\r\ns=-\r\nc=IN IP4 198.51.100.2\r\nt=0 0\r\n\
            m=audio 30000 RTP/AVP 18\r\na=rtpmap:18 G729/8000\r\n";
        assert!(matches!(
            negotiate(g729.as_bytes(), &CARRIED),
            Err(SdpError::NoCodec { .. })
        ));
        // A trunk limited to G.711 does not take Opus.
        let opus = g729
            .replace("18", "96")
            .replace("G729/8000", "opus/48000/2");
        assert!(matches!(
            negotiate(opus.as_bytes(), &[Codec::Pcmu, Codec::Pcma]),
            Err(SdpError::NoCodec { .. })
        ));
        let rejected = SIPP_ANSWER.replace("m=audio 6000", "m=audio 0");
        assert!(matches!(
            negotiate(rejected.as_bytes(), &CARRIED),
            Err(SdpError::NoCodec { .. })
        ));
        assert!(matches!(
            negotiate(b"not sdp", &CARRIED),
            Err(SdpError::Parse(_))
        ));
    }

    #[test]
    fn the_medias_direction_wins_over_the_sessions() {
        let sdp = SIPP_ANSWER.replace("t=0 0\r\n", "t=0 0\r\na=sendonly\r\n");
        let n = negotiate(sdp.as_bytes(), &CARRIED).unwrap();
        assert_eq!(n.direction, Direction::SendOnly);
        let sdp = format!("{sdp}a=sendrecv\r\n");
        let n = negotiate(sdp.as_bytes(), &CARRIED).unwrap();
        assert_eq!(n.direction, Direction::SendRecv);
    }

    #[test]
    fn hold_the_old_way_is_inactive() {
        let held = SIPP_ANSWER.replace("c=IN IP4 127.0.0.1", "c=IN IP4 0.0.0.0");
        assert_eq!(
            negotiate(held.as_bytes(), &CARRIED).unwrap().direction,
            Direction::Inactive
        );
    }
}
