//! Calls from the network: an INVITE outside any dialog.
//!
//! It is taken when its Request-URI names (E.164-normalised) a number routed to a trunk, it
//! comes from that trunk's address, the number's customer can pay for a minute, and its offer
//! has a codec the trunk and the RTP path share. Otherwise it is refused with the response
//! operators expect: 404 for a number nobody routes to a trunk, 403 for a caller that is not
//! the number's trunk or a customer without funds (a 402 of the API), 433 for a caller without
//! a number, 488 for an offer we cannot answer, 503 when the platform cannot take it now.
//!
//! A taken call is claimed in `sip_calls` (direction incoming, the caller's Call-ID), gets its
//! RTP port and is created as an incoming call running the number's flow; the dialer then tells
//! the carrier it [`arrived`](vbin_carrier::Carrier::arrived) (180) and, at the flow's answer,
//! that it was [`answered`](vbin_carrier::Carrier::answered) (200 with our answer).

use crate::{sdp, Live, SipCarrier};
use rsipstack::sip::prelude::{HeadersExt, ToTypedHeader};
use rsipstack::sip::uri::Param;
use rsipstack::sip::{Host, Request, StatusCode, Transport, Uri};
use rsipstack::transaction::transaction::Transaction;
use std::net::IpAddr;
use vbin_app::numbers::{IncomingCall, NumberRoute};
use vbin_app::{Acting, AppError};
use vbin_event_schema::{CallDirection, CallId, HangupCause, TrunkSettings, E164};

/// Why a call from the network is refused: the response and what the log says.
type Refusal = (StatusCode, String);

/// A call from the network that may be taken.
struct Admitted {
    route: NumberRoute,
    source: E164,
    destination: E164,
    /// What the caller's offer settled; None for an INVITE without one (a late offer: ours
    /// goes in the 200 and the caller answers in its ACK, RFC 3261 13.2.1).
    offer: Option<sdp::Negotiated>,
    /// The formats we offer when the caller did not (the trunk's codecs).
    ours: Vec<sdp::Format>,
}

impl SipCarrier {
    /// Takes or refuses the call `tx` offers.
    pub(crate) async fn take_call(&self, mut tx: Transaction) {
        let sip_call_id = tx
            .original
            .call_id_header()
            .map(|h| h.value().to_string())
            .unwrap_or_default();
        // Another INVITE of a call we have (a fork or a loop back to us): not a second call.
        if self.live().get(&sip_call_id).is_some() {
            tracing::info!(%sip_call_id, "incoming SIP call refused: its Call-ID is a live call's");
            let _ = tx.reply(StatusCode::LoopDetected).await;
            return;
        }
        let admitted = match self.admit(&tx.original).await {
            Ok(a) => a,
            Err((status, why)) => {
                tracing::info!(%sip_call_id, code = status.code(), %why, "incoming SIP call refused");
                metrics::counter!("vbin_sip_incoming_total", "outcome" => status.code().to_string())
                    .increment(1);
                let _ = tx.reply(status).await;
                return;
            }
        };
        let customer = admitted.route.customer;
        let call = CallId::new();
        let Some((rtp, rtp_port)) = self.bind_rtp(call) else {
            tracing::error!(%sip_call_id, ports = ?self.inner.rtp_ports, "no RTP port free (VBIN_RTP_PORTS): incoming call refused");
            let _ = tx.reply(StatusCode::ServiceUnavailable).await;
            return;
        };
        let tcp = tx
            .connection
            .as_ref()
            .is_some_and(|c| c.get_addr().r#type == Some(Transport::Tcp));
        let contact = format!(
            "sip:{}@{}{}",
            admitted.destination,
            self.inner.public,
            if tcp { ";transport=tcp" } else { "" }
        );
        let contact = Uri::try_from(contact.as_str()).ok();
        let dialog = match self.inner.layer.get_or_create_server_invite(
            &tx,
            self.inner.states.clone(),
            None,
            contact,
        ) {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(%sip_call_id, error = %e, "incoming SIP call: no dialog");
                let _ = tx.reply(StatusCode::ServerInternalError).await;
                return;
            }
        };
        let (ours, dtmf_pt) = match &admitted.offer {
            Some(n) => (n.formats[..1].to_vec(), n.dtmf_pt),
            None => (admitted.ours.clone(), Some(sdp::DTMF_PT)),
        };
        let timer = crate::session_timer::of_offer(&tx.original);
        self.live().insert(
            sip_call_id.clone(),
            Live {
                call,
                customer,
                dialog: dialog.clone(),
                direction: CallDirection::Incoming,
                answered: false,
                rtp: Some(rtp),
                rtp_port,
                ours,
                dtmf_pt,
                offer: admitted.offer.clone(),
                timer,
                refreshed: Default::default(),
                sdp_state: (sdp::Direction::SendRecv, 1),
                sending: crate::media::Sending::default(),
            },
        );
        // 100 Trying now; the transaction carries our later 180/200 and the caller's CANCEL.
        let mut handle = dialog.clone();
        tokio::spawn(async move {
            if let Err(e) = handle.handle(&mut tx).await {
                tracing::debug!(error = %e, "incoming INVITE transaction");
            }
        });
        if let Err(why) = self.create_incoming(call, &sip_call_id, admitted).await {
            tracing::warn!(%call, %sip_call_id, error = %why, "incoming SIP call could not be created: refused");
            self.forget(call);
            let _ = dialog.reject(Some(StatusCode::ServiceUnavailable), None);
            // The claim (if written) ends; a call the store did create after all is ended too.
            self.hung_up(call, customer, HangupCause::NetworkOutOfOrder)
                .await;
            return;
        }
        metrics::counter!("vbin_sip_incoming_total", "outcome" => "taken").increment(1);
        // A caller who gave up while the call was being created found no call to end.
        if self.live().of_call(call).is_none() {
            self.hung_up(call, customer, HangupCause::OriginatorCancel)
                .await;
        }
    }

    /// The claim row, then the call running the number's flow.
    async fn create_incoming(
        &self,
        call: CallId,
        sip_call_id: &str,
        a: Admitted,
    ) -> Result<(), String> {
        let customer = a.route.customer;
        sqlx::query(
            "INSERT INTO sip_calls \
             (call_id, customer_id, trunk_id, state, node, direction, sip_call_id) \
             VALUES ($1, $2, $3, 'ringing', $4, 'incoming', $5)",
        )
        .bind(call.as_uuid())
        .bind(customer.as_uuid())
        .bind(a.route.trunk.map(|t| t.as_uuid()))
        .bind(&self.inner.node)
        .bind(sip_call_id)
        .execute(&self.inner.pool)
        .await
        .map_err(|e| format!("claiming the call: {e}"))?;
        let acting = Acting::system("sip-carrier", customer, sip_call_id);
        self.inner
            .app
            .incoming_call(
                &acting,
                IncomingCall {
                    call_id: call,
                    customer,
                    source: a.source,
                    destination: a.destination,
                    sandbox: None,
                    trunk_id: a.route.trunk,
                },
            )
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    /// Whether the INVITE `req` may become a call, and what it is.
    async fn admit(&self, req: &Request) -> Result<Admitted, Refusal> {
        let unavailable = |e: AppError| (StatusCode::ServiceUnavailable, e.to_string());
        let destination = req.uri.user().and_then(e164_of).ok_or((
            StatusCode::NotFound,
            "the Request-URI names no number".into(),
        ))?;
        let route = self
            .inner
            .app
            .number_route(&destination)
            .await
            .map_err(unavailable)?;
        let not_found = || {
            (
                StatusCode::NotFound,
                format!("no number {destination} on a trunk"),
            )
        };
        let route = route.filter(|r| r.trunk.is_some()).ok_or_else(not_found)?;
        let trunk_id = route.trunk.ok_or_else(not_found)?;
        let trunk = match self.inner.app.live_trunk(route.customer, trunk_id).await {
            Ok(t) => t,
            Err(AppError::NotFound(_)) => return Err(not_found()),
            Err(e) => return Err(unavailable(e)),
        };
        let from = source_ip(req);
        if !from_trunk(from, &trunk).await {
            return Err((
                StatusCode::Forbidden,
                format!(
                    "{destination} takes calls from trunk {trunk_id} ({}), not from {from:?}",
                    trunk.host
                ),
            ));
        }
        let source = req
            .from_header()
            .ok()
            .and_then(|f| f.uri().ok())
            .and_then(|u| u.user().and_then(e164_of))
            .ok_or((
                StatusCode::Other(433, "Anonymity Disallowed".into()),
                "the caller has no number".into(),
            ))?;
        match self.inner.app.require_funds(route.customer).await {
            Ok(()) => {}
            // A 402 of the API: operators expect a final refusal that stops rerouting.
            Err(AppError::PaymentRequired) => {
                return Err((
                    StatusCode::Forbidden,
                    format!("customer {} has no funds", route.customer),
                ))
            }
            Err(e) => return Err(unavailable(e)),
        }
        let offer = if req.body.is_empty() {
            None
        } else {
            Some(
                sdp::negotiate(&req.body, &trunk.codecs)
                    .map_err(|e| (StatusCode::NotAcceptableHere, e.to_string()))?,
            )
        };
        Ok(Admitted {
            route,
            source,
            destination,
            offer,
            ours: trunk.codecs.iter().map(|c| sdp::Format::ours(*c)).collect(),
        })
    }
}

/// The E.164 number a SIP user part names: visual separators and parameters dropped, `00` or
/// no prefix read as international (`+`). None when it is no number.
pub(crate) fn e164_of(user: &str) -> Option<E164> {
    let user = user.split(';').next().unwrap_or_default();
    let digits: String = user
        .chars()
        .filter(|c| !matches!(c, ' ' | '-' | '.' | '(' | ')'))
        .collect();
    let number = match digits.strip_prefix('+') {
        Some(rest) => rest.to_string(),
        None => digits.strip_prefix("00").unwrap_or(&digits).to_string(),
    };
    if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    E164::parse(&format!("+{number}")).ok()
}

/// The address the request came from: its top Via's `received`, else the Via's host (which
/// the transport layer left because they matched).
fn source_ip(req: &Request) -> Option<IpAddr> {
    let via = req.via_header().ok()?.typed().ok()?;
    let received = via.params.iter().find_map(|p| match p {
        Param::Received(r) => r.value().parse::<IpAddr>().ok(),
        _ => None,
    });
    if received.is_some() {
        return received;
    }
    match via.uri.host_with_port.host {
        Host::IpAddr(ip) => Some(ip),
        Host::Domain(_) => None,
    }
}

/// Whether `from` is an address of the trunk's host (an IP, or a name resolved now).
async fn from_trunk(from: Option<IpAddr>, trunk: &TrunkSettings) -> bool {
    let Some(from) = from else { return false };
    if let Ok(ip) = trunk.host.parse::<IpAddr>() {
        return ip == from;
    }
    match tokio::net::lookup_host((trunk.host.as_str(), trunk.port)).await {
        Ok(addrs) => addrs.map(|a| a.ip()).any(|ip| ip == from),
        Err(e) => {
            tracing::warn!(host = %trunk.host, error = %e, "resolving the trunk's host failed");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_parts_normalise_to_e164() {
        let e = |s: &str| e164_of(s).map(|n| n.as_str().to_string());
        assert_eq!(e("+15550001111").as_deref(), Some("+15550001111"));
        assert_eq!(e("15550001111").as_deref(), Some("+15550001111"));
        assert_eq!(e("0015550001111").as_deref(), Some("+15550001111"));
        assert_eq!(e("+1 (555) 000-1111").as_deref(), Some("+15550001111"));
        assert_eq!(e("+15550001111;npdi").as_deref(), Some("+15550001111"));
        assert_eq!(e("anonymous"), None);
        assert_eq!(e(""), None);
        assert_eq!(e("+"), None);
        assert_eq!(e("1555x"), None);
    }
}
