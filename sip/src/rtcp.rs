//! RTCP for a call's RTP (RFC 3550 6), on `rtcp-types`: on the port above the RTP port, a
//! compound report every ~5 s (a sender report while we send, else a receiver report, with a
//! reception report of the far end's stream, and our CNAME), a BYE when the call's audio ends;
//! the far end's reports of our stream become call-quality metrics
//! (`vbin_rtcp_fraction_lost`, `vbin_rtcp_jitter_seconds`).

use crate::rtp::Reception;
use rtcp_types::{
    Bye, Compound, Packet, ReceiverReport, ReportBlock, ReportBlockBuilder, RtcpPacketWriter,
    RtcpPacketWriterExt, Sdes, SdesChunk, SdesItem, SenderReport,
};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::oneshot;

/// What we sent, as of the last packet (for sender reports).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sent {
    /// Packets and payload octets so far.
    pub packets: u32,
    /// Payload octets so far.
    pub octets: u32,
    /// The timestamp of the last packet, and when it went.
    pub rtp_ts: u32,
    /// When the last packet went.
    pub at: Instant,
    /// The stream's RTP clock.
    pub clock_hz: u32,
}

/// One report of the far end about our stream.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FarReport {
    /// The share of our packets it lost since its last report (0..1).
    pub fraction_lost: f64,
    /// Packets lost in all.
    pub cumulative_lost: u32,
    /// Its interarrival jitter of our stream, in our clock's ticks.
    pub jitter: u32,
}

/// The counts the RTP path keeps for RTCP: written by the sender and the reader, read by the
/// report task.
#[derive(Debug, Default)]
pub struct Stats {
    /// Ours, while we send.
    pub sent: Mutex<Option<Sent>>,
    /// Theirs, once they send.
    pub received: Mutex<Option<Reception>>,
    /// The far end's last report of our stream.
    pub far: Mutex<Option<FarReport>>,
}

/// A packet's bytes.
fn bytes(p: &impl RtcpPacketWriter) -> Option<Vec<u8>> {
    let mut out = vec![0u8; p.calculate_size().ok()?];
    p.write_into(&mut out).ok()?;
    Some(out)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Now as a 64-bit NTP timestamp (seconds since 1900 in the high half).
fn ntp_now() -> u64 {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let secs = d.as_secs() + 2_208_988_800;
    let frac = (u64::from(d.subsec_nanos()) << 32) / 1_000_000_000;
    (secs << 32) | frac
}

/// The interval before the next report: 5 s, randomized to 0.5-1.5 times (RFC 3550 6.3.1), so
/// that calls started together do not report together.
fn interval() -> Duration {
    let r = (uuid::Uuid::new_v4().as_u128() % 1_000) as u64;
    Duration::from_millis(2_500 + r * 5)
}

/// The report task's memory: the last report's counts (for the fraction lost since) and the
/// far end's last sender report (for LSR/DLSR).
#[derive(Default)]
struct Reporter {
    /// The stream (SSRC, expected so far) and counts at the last report.
    prior: Option<(u32, u64, u64)>,
    their_sr: Option<(u32, Instant)>,
}

impl Reporter {
    /// The reception report block of `r`.
    fn block(&mut self, r: &Reception) -> ReportBlockBuilder {
        // A stream that started over (new SSRC, or counts below the last report's) is
        // counted from its start.
        let (pe, pr) = match self.prior {
            Some((ssrc, pe, pr)) if ssrc == r.ssrc && pe <= r.expected && pr <= r.received => {
                (pe, pr)
            }
            _ => (0, 0),
        };
        let (expected, received) = (r.expected - pe, r.received - pr);
        self.prior = Some((r.ssrc, r.expected, r.received));
        let lost = expected.saturating_sub(received);
        let fraction = (lost << 8)
            .checked_div(expected)
            .map_or(0, |f| f.min(255) as u8);
        let cumulative = r.expected.saturating_sub(r.received).min(0x7f_ffff) as u32;
        let (lsr, dlsr) = match self.their_sr {
            Some((lsr, at)) => (lsr, (at.elapsed().as_secs_f64() * 65_536.0) as u32),
            None => (0, 0),
        };
        ReportBlock::builder(r.ssrc)
            .fraction_lost(fraction)
            .cumulative_lost(cumulative)
            .extended_sequence_number(r.highest)
            .interarrival_jitter(r.jitter)
            .last_sender_report_timestamp(lsr)
            .delay_since_last_sender_report_timestamp(dlsr)
    }

    /// Our compound report: SR (or RR) with a block about their stream, then SDES CNAME, then
    /// BYE when `bye`.
    fn report(&mut self, ssrc: u32, cname: &str, stats: &Stats, bye: bool) -> Option<Vec<u8>> {
        let sent = *lock(&stats.sent);
        let block = lock(&stats.received).map(|r| self.block(&r));
        let sdes = Sdes::builder().add_chunk(
            SdesChunk::builder(ssrc).add_item(SdesItem::builder(SdesItem::CNAME, cname)),
        );
        let mut compound = Compound::builder();
        compound = match sent {
            Some(s) => {
                // The RTP time of now, from the last packet's and the time since it went.
                let since = (s.at.elapsed().as_secs_f64() * f64::from(s.clock_hz)) as u32;
                let mut sr = SenderReport::builder(ssrc)
                    .ntp_timestamp(ntp_now())
                    .rtp_timestamp(s.rtp_ts.wrapping_add(since))
                    .packet_count(s.packets)
                    .octet_count(s.octets);
                if let Some(b) = block {
                    sr = sr.add_report_block(b);
                }
                compound.add_packet(sr)
            }
            None => {
                let mut rr = ReceiverReport::builder(ssrc);
                if let Some(b) = block {
                    rr = rr.add_report_block(b);
                }
                compound.add_packet(rr)
            }
        };
        compound = compound.add_packet(sdes);
        if bye {
            compound = compound.add_packet(Bye::builder().add_source(ssrc));
        }
        bytes(&compound)
    }

    /// Takes a compound packet of the far end's: its reports of our stream (`ssrc`) go to
    /// `stats` and the metrics; its sender report is remembered for our next block.
    fn take(&mut self, data: &[u8], ssrc: u32, stats: &Stats, clock_hz: u32) -> bool {
        let Ok(compound) = Compound::parse(data) else {
            return false;
        };
        for packet in compound.flatten() {
            let blocks: Vec<(u8, u32, u32)> = match &packet {
                Packet::Sr(sr) => {
                    // LSR: the middle 32 bits of its NTP timestamp.
                    self.their_sr = Some(((sr.ntp_timestamp() >> 16) as u32, Instant::now()));
                    sr.report_blocks()
                        .filter(|b| b.ssrc() == ssrc)
                        .map(|b| {
                            (
                                b.fraction_lost(),
                                b.cumulative_lost(),
                                b.interarrival_jitter(),
                            )
                        })
                        .collect()
                }
                Packet::Rr(rr) => rr
                    .report_blocks()
                    .filter(|b| b.ssrc() == ssrc)
                    .map(|b| {
                        (
                            b.fraction_lost(),
                            b.cumulative_lost(),
                            b.interarrival_jitter(),
                        )
                    })
                    .collect(),
                _ => Vec::new(),
            };
            for (fraction, cumulative, jitter) in blocks {
                let r = FarReport {
                    fraction_lost: f64::from(fraction) / 256.0,
                    cumulative_lost: cumulative,
                    jitter,
                };
                metrics::counter!("vbin_rtcp_reports_received_total").increment(1);
                metrics::histogram!("vbin_rtcp_fraction_lost").record(r.fraction_lost);
                metrics::histogram!("vbin_rtcp_jitter_seconds")
                    .record(f64::from(jitter) / f64::from(clock_hz.max(1)));
                *lock(&stats.far) = Some(r);
            }
        }
        true
    }
}

/// Runs a call's RTCP on `socket` until `done` fires (or its sender is dropped), then says
/// BYE. `remote` is the far end's RTCP address (their RTP port + 1), latched to where their
/// RTCP comes from; `ssrc` is our stream's, `clock_hz` its clock.
pub async fn run(
    socket: tokio::net::UdpSocket,
    mut remote: SocketAddr,
    ssrc: u32,
    clock_hz: u32,
    cname: String,
    stats: Arc<Stats>,
    mut done: oneshot::Receiver<()>,
) {
    let mut reporter = Reporter::default();
    let mut buf = vec![0u8; 1_500];
    let mut next = tokio::time::Instant::now() + interval() / 2;
    loop {
        tokio::select! {
            _ = &mut done => break,
            _ = tokio::time::sleep_until(next) => {
                if let Some(p) = reporter.report(ssrc, &cname, &stats, false) {
                    let _ = socket.send_to(&p, remote).await;
                    metrics::counter!("vbin_rtcp_reports_sent_total").increment(1);
                }
                next = tokio::time::Instant::now() + interval();
            }
            got = socket.recv_from(&mut buf) => match got {
                Ok((n, from)) => {
                    if reporter.take(&buf[..n], ssrc, &stats, clock_hz) {
                        remote = from;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {}
                Err(e) => {
                    tracing::debug!(error = %e, "RTCP socket");
                    break;
                }
            },
        }
    }
    if let Some(p) = reporter.report(ssrc, &cname, &stats, true) {
        let _ = socket.send_to(&p, remote).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Our reports reach a far end as SR + SDES (+ BYE at the end) with our counts and a
    /// block about its stream; its receiver report of our stream is taken.
    // Two workers: the far end's reads block one.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reports_both_ways_over_real_sockets() {
        let ours = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let our_addr = ours.local_addr().unwrap();
        let far = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        far.set_read_timeout(Some(Duration::from_secs(6))).unwrap();
        let stats = Arc::new(Stats::default());
        *lock(&stats.sent) = Some(Sent {
            packets: 250,
            octets: 40_000,
            rtp_ts: 1_000,
            at: Instant::now(),
            clock_hz: 8_000,
        });
        *lock(&stats.received) = Some(Reception {
            ssrc: 0xfa7,
            highest: 99,
            expected: 100,
            received: 90,
            jitter: 12,
        });
        let (stop, done) = oneshot::channel();
        let task = tokio::spawn(run(
            ours,
            "127.0.0.1:9".parse().unwrap(),
            0x5eed,
            8_000,
            "vbin@test".into(),
            stats.clone(),
            done,
        ));
        // The far end reports first (we latch to it), 25 % of our packets lost.
        let rr = ReceiverReport::builder(0xfa7).add_report_block(
            ReportBlock::builder(0x5eed)
                .fraction_lost(64)
                .cumulative_lost(3)
                .interarrival_jitter(40),
        );
        let rr = bytes(&rr).unwrap();
        far.send_to(&rr, our_addr).unwrap();
        let mut buf = [0u8; 1_500];
        let n = far.recv(&mut buf).unwrap();
        let c: Vec<Packet> = Compound::parse(&buf[..n]).unwrap().flatten().collect();
        let Packet::Sr(sr) = &c[0] else {
            panic!("{c:?}")
        };
        assert_eq!(
            (sr.ssrc(), sr.packet_count(), sr.octet_count()),
            (0x5eed, 250, 40_000)
        );
        let b: Vec<ReportBlock> = sr.report_blocks().collect();
        assert_eq!(b.len(), 1);
        assert_eq!(
            (
                b[0].ssrc(),
                b[0].fraction_lost(),
                b[0].cumulative_lost(),
                b[0].interarrival_jitter()
            ),
            (0xfa7, 25, 10, 12),
            "10 of 100 lost: 25/256"
        );
        assert!(matches!(c[1], Packet::Sdes(_)), "{c:?}");
        assert_eq!(
            *lock(&stats.far),
            Some(FarReport {
                fraction_lost: 0.25,
                cumulative_lost: 3,
                jitter: 40
            })
        );
        stop.send(()).unwrap();
        task.await.unwrap();
        let n = far.recv(&mut buf).unwrap();
        let c: Vec<Packet> = Compound::parse(&buf[..n]).unwrap().flatten().collect();
        assert!(matches!(c.last(), Some(Packet::Bye(_))), "{c:?}");
    }
}
