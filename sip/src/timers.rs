//! Running a call's session timer ([`crate::session_timer`]): refreshing it, or ending the
//! call when the far end stops refreshing.

use crate::session_timer::SessionTimer;
use crate::SipCarrier;
use rsipstack::dialog::invite_dialog::InviteDialog;
use rsipstack::sip::{Header, StatusCodeKind};
use std::sync::Arc;
use tokio::sync::Notify;
use vbin_event_schema::{CallId, CustomerId, HangupCause};

impl SipCarrier {
    /// Keeps the call's session timer until the call ends: refreshes, or waits for the far
    /// end's (`refreshed` is notified by each re-INVITE or UPDATE it sends).
    pub(crate) fn keep_session(
        &self,
        call: CallId,
        customer: CustomerId,
        dialog: InviteDialog,
        timer: SessionTimer,
        refreshed: Arc<Notify>,
    ) {
        let this = self.clone();
        tokio::spawn(async move {
            tracing::debug!(%call, ?timer, "session timer");
            loop {
                let expired = if timer.we_refresh {
                    tokio::time::sleep(timer.interval / 2).await;
                    if !this.is_live(call) {
                        return;
                    }
                    !this.refresh(call, &dialog, timer).await
                } else {
                    tokio::select! {
                        _ = refreshed.notified() => false,
                        _ = tokio::time::sleep(timer.expiry()) => true,
                    }
                };
                if !this.is_live(call) {
                    return;
                }
                if expired {
                    tracing::warn!(%call, interval_s = timer.interval.as_secs(), "session timer expired: ending the call");
                    metrics::counter!("vbin_sip_session_expired_total").increment(1);
                    // Reported first: our BYE then finds the call ended by the network.
                    let cmd = crate::remote_hangup(HangupCause::NetworkOutOfOrder);
                    this.report(call, customer, cmd).await;
                    if let Err(e) = dialog.bye().await {
                        tracing::warn!(%call, error = %e, "BYE after the session timer failed");
                    }
                    return;
                }
            }
        });
    }

    fn is_live(&self, call: CallId) -> bool {
        self.live().of_call(call).is_some()
    }

    /// One refresh: a re-INVITE with the same SDP; whether a 2xx came back.
    async fn refresh(&self, call: CallId, dialog: &InviteDialog, timer: SessionTimer) -> bool {
        let ip = self.inner.public.ip();
        let sdp = self
            .live()
            .of_call(call)
            .map(|l| l.description(ip).into_bytes());
        let headers = vec![
            Header::ContentType("application/sdp".into()),
            Header::Supported("timer".into()),
            timer.refreshing(),
        ];
        match dialog.reinvite(Some(headers), sdp).await {
            Ok(Some(r)) if r.status_code.kind() == StatusCodeKind::Successful => {
                // Our CSeq moved on: a BYE from the saved dialog must come after it.
                self.answered_with(call, dialog).await;
                true
            }
            Ok(Some(r)) => {
                tracing::warn!(%call, code = r.status_code.code(), "session refresh refused");
                false
            }
            Ok(None) => false,
            Err(e) => {
                tracing::warn!(%call, error = %e, "session refresh failed");
                false
            }
        }
    }
}
