//! The SIP carrier (issue 18), in progress: so far how SIP's final responses map to the call
//! vocabulary, the same outcomes the sandbox reports (a SIP call's events match the sandbox's
//! for the same outcome). Signalling (rsipstack) and RTP come next.

use vbin_event_schema::HangupCause;

/// The cause a final response of 300 or more to our INVITE means; the call's status follows
/// from it ([`HangupCause::resulting_status`]). The listed codes are API.md's; the others
/// follow RFC 3398's SIP-to-ISUP table where the vocabulary has the cause (401/402/407 call
/// rejected, 410/485 unallocated), else the network failed.
pub fn cause_of_final(code: u16) -> HangupCause {
    match code {
        486 | 600 => HangupCause::UserBusy,
        408 | 480 | 487 => HangupCause::NoAnswer,
        404 | 410 | 484 | 485 | 604 => HangupCause::UnallocatedNumber,
        401 | 402 | 403 | 407 | 603 => HangupCause::CallRejected,
        _ => HangupCause::NetworkOutOfOrder,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vbin_event_schema::CallStatus;

    #[test]
    fn final_responses_map_to_the_sandboxs_outcomes() {
        let ringing = CallStatus::Ringing;
        for (code, cause, status) in [
            (486, HangupCause::UserBusy, CallStatus::Busy),
            (600, HangupCause::UserBusy, CallStatus::Busy),
            (408, HangupCause::NoAnswer, CallStatus::NoAnswer),
            (480, HangupCause::NoAnswer, CallStatus::NoAnswer),
            (487, HangupCause::NoAnswer, CallStatus::NoAnswer),
            (404, HangupCause::UnallocatedNumber, CallStatus::Failed),
            (484, HangupCause::UnallocatedNumber, CallStatus::Failed),
            (604, HangupCause::UnallocatedNumber, CallStatus::Failed),
            (403, HangupCause::CallRejected, CallStatus::Failed),
            (603, HangupCause::CallRejected, CallStatus::Failed),
            (500, HangupCause::NetworkOutOfOrder, CallStatus::Failed),
            (503, HangupCause::NetworkOutOfOrder, CallStatus::Failed),
            (488, HangupCause::NetworkOutOfOrder, CallStatus::Failed),
            (302, HangupCause::NetworkOutOfOrder, CallStatus::Failed),
        ] {
            assert_eq!(cause_of_final(code), cause, "{code}");
            assert_eq!(cause.resulting_status(ringing), status, "{code}");
        }
    }
}
