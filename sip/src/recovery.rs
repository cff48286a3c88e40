//! Calls that outlive their process.
//!
//! Each carrier process leases its live calls' `sip_calls` rows ([`LEASE`], renewed every
//! [`RENEW`]); a confirmed dialog is saved in its row (rsipstack's snapshot, as JSON). When a
//! process dies (kill -9, a lost machine), its leases run out: any carrier process then ends
//! those calls (`network_out_of_order`, by the remote side: the network we were the end of is
//! gone) and, for a saved dialog, restores it and sends the far end a BYE, so nobody keeps a
//! call up that no one carries.

use crate::SipCarrier;
use rsipstack::dialog::dialog::{Dialog, DialogSnapshot, DialogSnapshotState, SessionIdState};
use rsipstack::dialog::invite_dialog::InviteDialog;
use rsipstack::dialog::DialogId;
use rsipstack::sip::typed::{From, To};
use rsipstack::sip::{Contact, Route, Uri};
use rsipstack::transaction::key::TransactionRole;
use serde::{Deserialize, Serialize};
use std::time::Duration;
use uuid::Uuid;
use vbin_event_schema::{CallId, CustomerId, HangupCause};

/// How long a process's claim on its calls lasts without renewal.
pub const LEASE: Duration = Duration::from_secs(20);

/// How often a process renews its leases and looks for calls of dead processes.
pub const RENEW: Duration = Duration::from_secs(5);

/// A confirmed dialog as saved in `sip_calls.dialog`: rsipstack's snapshot in strings.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub struct SavedDialog {
    /// We answered it (UAS) rather than placed it.
    pub server: bool,
    /// SIP Call-ID.
    pub call_id: String,
    /// Our tag.
    pub local_tag: String,
    /// Theirs.
    pub remote_tag: String,
    /// The From header (with its tag).
    pub from: String,
    /// The To header.
    pub to: String,
    /// Our last CSeq.
    pub local_cseq: u32,
    /// Theirs.
    pub remote_cseq: u32,
    /// Our Contact.
    pub local_contact: Option<String>,
    /// Their URI.
    pub remote_uri: String,
    /// Their Contact (the remote target).
    pub remote_contact: Option<String>,
    /// The route set.
    pub route_set: Vec<String>,
    /// Whether reliable provisionals were agreed.
    pub supports_100rel: bool,
    /// RFC 7989 Session-ID (ours, theirs).
    pub session_id: Option<(String, Option<String>)>,
}

impl SavedDialog {
    /// The savable form of a dialog's snapshot.
    pub fn of(s: &DialogSnapshot) -> Self {
        Self {
            server: s.role == TransactionRole::Server,
            call_id: s.id.call_id.clone(),
            local_tag: s.id.local_tag.clone(),
            remote_tag: s.id.remote_tag.clone(),
            from: s.from.to_string(),
            to: s.to.to_string(),
            local_cseq: s.local_cseq,
            remote_cseq: s.remote_cseq,
            local_contact: s.local_contact.as_ref().map(|u| u.to_string()),
            remote_uri: s.remote_uri.to_string(),
            remote_contact: s.remote_contact.as_ref().map(|c| c.value().to_string()),
            route_set: s.route_set.iter().map(|r| r.value().to_string()).collect(),
            supports_100rel: s.supports_100rel,
            session_id: s
                .session_id
                .as_ref()
                .map(|i| (i.local.clone(), i.remote.clone())),
        }
    }

    /// Back to a (confirmed) snapshot rsipstack can restore.
    pub fn snapshot(&self) -> Result<DialogSnapshot, String> {
        let uri = |s: &str| Uri::try_from(s).map_err(|e| format!("{s}: {e}"));
        Ok(DialogSnapshot {
            state: DialogSnapshotState::Confirmed,
            role: if self.server {
                TransactionRole::Server
            } else {
                TransactionRole::Client
            },
            id: DialogId {
                call_id: self.call_id.clone(),
                local_tag: self.local_tag.clone(),
                remote_tag: self.remote_tag.clone(),
            },
            from: From::parse(&self.from).map_err(|e| format!("From {}: {e}", self.from))?,
            to: To::parse(&self.to).map_err(|e| format!("To {}: {e}", self.to))?,
            local_cseq: self.local_cseq,
            remote_cseq: self.remote_cseq,
            local_contact: self.local_contact.as_deref().map(uri).transpose()?,
            remote_uri: uri(&self.remote_uri)?,
            remote_contact: self.remote_contact.as_deref().map(Contact::new),
            route_set: self.route_set.iter().map(Route::new).collect(),
            supports_100rel: self.supports_100rel,
            session_id: self
                .session_id
                .as_ref()
                .map(|(local, remote)| SessionIdState {
                    local: local.clone(),
                    remote: remote.clone(),
                }),
        })
    }
}

impl SipCarrier {
    /// Records the call answered with its confirmed dialog, so that a process outliving
    /// this one can BYE the far end.
    pub(crate) async fn answered_with(&self, call: CallId, dialog: &InviteDialog) {
        let saved = serde_json::to_value(SavedDialog::of(&dialog.snapshot())).ok();
        self.set_state_with(call, "answered", saved).await;
    }

    /// Renews this process's leases and ends the calls of dead processes, every [`RENEW`].
    /// Renewal runs on its own task: ending orphans (with retried reports) must never hold
    /// up this process's own leases, or others would take it for dead.
    pub(crate) async fn keep_leases(&self) {
        let this = self.clone();
        let renewal = tokio::spawn(async move {
            let mut tick = tokio::time::interval(RENEW);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if let Err(e) = this.renew().await {
                    tracing::warn!(error = %e, "renewing the SIP calls' leases failed");
                }
            }
        });
        let _abort = AbortOnDrop(renewal);
        let mut tick = tokio::time::interval(RENEW);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match self.end_orphans().await {
                Ok(0) => {}
                Ok(n) => tracing::warn!(calls = n, "ended SIP calls of a process that died"),
                Err(e) => {
                    tracing::warn!(error = %e, "looking for SIP calls of dead processes failed")
                }
            }
        }
    }

    async fn renew(&self) -> Result<(), sqlx::Error> {
        sqlx::query(
            "UPDATE sip_calls SET lease_until = now() + make_interval(secs => $2) \
             WHERE node = $1 AND state <> 'ended'",
        )
        .bind(&self.inner.node)
        .bind(LEASE.as_secs_f64())
        .execute(&self.inner.pool)
        .await
        .map(|_| ())
    }

    /// Ends calls whose lease ran out (claimed row by row, so two processes never end the
    /// same one); returns how many.
    async fn end_orphans(&self) -> Result<usize, sqlx::Error> {
        let orphans: Vec<(Uuid, Uuid, Option<serde_json::Value>)> = sqlx::query_as(
            "UPDATE sip_calls s SET state = 'ended', updated_at = now() \
             FROM (SELECT call_id FROM sip_calls WHERE state <> 'ended' AND lease_until < now() \
                   ORDER BY lease_until LIMIT 100 FOR UPDATE SKIP LOCKED) dead \
             WHERE s.call_id = dead.call_id \
             RETURNING s.call_id, s.customer_id, s.dialog",
        )
        .fetch_all(&self.inner.pool)
        .await?;
        for (call, customer, dialog) in &orphans {
            let call = CallId(*call);
            tracing::warn!(%call, dialog_saved = dialog.is_some(), "SIP call of a process that died: ending it");
            if let Some(saved) = dialog {
                self.bye_restored(call, saved.clone());
            }
            let cmd = crate::remote_hangup(HangupCause::NetworkOutOfOrder);
            let (this, customer) = (self.clone(), CustomerId(*customer));
            tokio::spawn(async move { this.report(call, customer, cmd).await });
        }
        Ok(orphans.len())
    }

    /// Restores a dead process's dialog here and sends its far end a BYE.
    fn bye_restored(&self, call: CallId, saved: serde_json::Value) {
        let restored = serde_json::from_value::<SavedDialog>(saved)
            .map_err(|e| e.to_string())
            .and_then(|s| s.snapshot())
            .and_then(|snapshot| {
                let id = snapshot.id.clone();
                self.inner
                    .layer
                    .restore_from_snapshot(snapshot, self.inner.states.clone())
                    .map_err(|e| e.to_string())?;
                match self.inner.layer.get_dialog(&id) {
                    Some(Dialog::Invite(d)) => Ok(d),
                    _ => Err("not restored".to_string()),
                }
            });
        let dialog = match restored {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(%call, error = %e, "the saved dialog cannot be restored: no BYE");
                return;
            }
        };
        let layer = self.inner.layer.clone();
        tokio::spawn(async move {
            let id = dialog.id();
            match tokio::time::timeout(Duration::from_secs(35), dialog.bye()).await {
                Ok(Ok(())) => tracing::info!(%call, "BYE sent for a dialog of a process that died"),
                Ok(Err(e)) => tracing::warn!(%call, error = %e, "BYE of a restored dialog failed"),
                Err(_) => tracing::warn!(%call, "BYE of a restored dialog got no answer"),
            }
            layer.remove_dialog(&id);
        });
    }
}

/// Aborts the task when dropped (the endpoint's tasks end together).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_saved_dialog_round_trips_through_json() {
        let saved = SavedDialog {
            server: false,
            call_id: "01a2-call".into(),
            local_tag: "ours".into(),
            remote_tag: "theirs".into(),
            from: "<sip:+15550001000@192.0.2.1:5060>;tag=ours".into(),
            to: "<sip:+15550002000@198.51.100.2:5060>;tag=theirs".into(),
            local_cseq: 2,
            remote_cseq: 0,
            local_contact: Some("sip:+15550001000@192.0.2.1:5060".into()),
            remote_uri: "sip:+15550002000@198.51.100.2:5060".into(),
            remote_contact: Some("<sip:198.51.100.2:5070;transport=UDP>".into()),
            route_set: vec!["<sip:proxy.example;lr>".into()],
            supports_100rel: false,
            session_id: None,
        };
        let snapshot = saved.snapshot().unwrap();
        assert_eq!(snapshot.id.remote_tag, "theirs");
        let back = SavedDialog::of(&snapshot);
        let json = serde_json::to_value(&back).unwrap();
        assert_eq!(serde_json::from_value::<SavedDialog>(json).unwrap(), saved);
    }
}
