//! The Trunk aggregate: a customer's SIP trunk (the carrier's host, port and transport, the
//! digest credentials it asks for, the codecs to offer). The password arrives sealed (the
//! application layer encrypts it before the command), so the domain and the log never see it
//! in clear.

use crate::{DomainError, ResourceView};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use vbin_event_schema::*;

/// Longest name, host or username.
const MAX_TEXT: usize = 253;
/// Longest password, in bytes.
const MAX_PASSWORD: usize = 128;

/// Trunk commands.
#[derive(Clone, Debug, PartialEq)]
pub enum TrunkCommand {
    /// Set it up.
    Create {
        /// Id.
        trunk_id: TrunkId,
        /// Owner.
        customer_id: CustomerId,
        /// Settings (checked here).
        settings: TrunkSettings,
        /// When.
        at: DateTime<Utc>,
    },
    /// Replace its settings.
    Update {
        /// Settings (checked here).
        settings: TrunkSettings,
        /// When.
        at: DateTime<Utc>,
    },
    /// Delete it.
    Delete {
        /// When.
        at: DateTime<Utc>,
    },
    /// What a keepalive found: the trunk answered (with `code`) or not. An event only when
    /// reachability changes.
    MarkReachability {
        /// It answered.
        reachable: bool,
        /// Its answer's status code.
        code: Option<u16>,
        /// When.
        at: DateTime<Utc>,
    },
}

/// A trunk's state.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Trunk {
    /// None until created.
    pub id: Option<TrunkId>,
    /// Owner.
    pub customer_id: CustomerId,
    /// Settings.
    pub settings: Option<TrunkSettings>,
    /// Deleted.
    pub deleted: bool,
    /// Whether it answers keepalives (None: not found out since its address was set).
    #[serde(default)]
    pub reachable: Option<bool>,
    /// The status code of its last answer that changed reachability.
    #[serde(default)]
    pub reachability_code: Option<u16>,
    /// When reachability last changed.
    #[serde(default)]
    pub tm_reachability: Option<DateTime<Utc>>,
    /// Created.
    pub tm_create: Option<DateTime<Utc>>,
    /// Changed.
    pub tm_update: Option<DateTime<Utc>>,
    /// Deleted.
    pub tm_delete: Option<DateTime<Utc>>,
}

/// A SIP host: a DNS name (letters, digits, `-`, `.`) or an IP address.
fn host_ok(host: &str) -> bool {
    if host.parse::<std::net::IpAddr>().is_ok() {
        return true;
    }
    !host.is_empty()
        && host.len() <= MAX_TEXT
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// Checks a password in clear before it is sealed.
pub fn check_password(password: &str) -> Result<(), DomainError> {
    if password.is_empty()
        || password.len() > MAX_PASSWORD
        || password.chars().any(char::is_control)
    {
        return Err(DomainError::Invalid(format!(
            "password must be 1 to {MAX_PASSWORD} bytes without control characters"
        )));
    }
    Ok(())
}

/// Checks a trunk's settings.
pub fn check_settings(s: &TrunkSettings) -> Result<(), DomainError> {
    let invalid = |m: &str| Err(DomainError::Invalid(m.into()));
    if s.name.trim().is_empty() || s.name.len() > MAX_TEXT || s.name.chars().any(char::is_control) {
        return invalid("name must be 1 to 253 bytes without control characters");
    }
    if !host_ok(&s.host) {
        return invalid("host must be a DNS name or an IP address");
    }
    if s.port == 0 {
        return invalid("port must be 1 to 65535");
    }
    if let Some(u) = &s.username {
        if u.is_empty()
            || u.len() > MAX_TEXT
            || u.chars().any(|c| c.is_control() || c.is_whitespace())
        {
            return invalid("username must be 1 to 253 bytes without spaces");
        }
    }
    if s.password_sealed.is_some() && s.username.is_none() {
        return invalid("a password needs a username");
    }
    if s.codecs.is_empty() {
        return invalid("codecs must name at least one codec");
    }
    for (i, c) in s.codecs.iter().enumerate() {
        if s.codecs[..i].contains(c) {
            return Err(DomainError::Invalid(format!(
                "codecs: {} is listed twice",
                c.as_str()
            )));
        }
    }
    Ok(())
}

impl Trunk {
    /// The API view (the password only as `password_set`).
    pub fn view(&self) -> Value {
        let s = self.settings.as_ref();
        json!({
            "id": self.id,
            "type": "trunk",
            "customer_id": self.customer_id,
            "name": s.map(|s| &s.name),
            "host": s.map(|s| &s.host),
            "port": s.map(|s| s.port),
            "transport": s.map(|s| s.transport),
            "username": s.and_then(|s| s.username.as_ref()),
            "password_set": s.is_some_and(|s| s.password_sealed.is_some()),
            "codecs": s.map(|s| &s.codecs),
            "status": if self.deleted { "deleted" } else { "active" },
            "reachability": match self.reachable {
                None => "unknown",
                Some(true) => "reachable",
                Some(false) => "unreachable",
            },
            "reachability_code": self.reachability_code,
            "tm_reachability": self.tm_reachability,
            "tm_create": self.tm_create,
            "tm_update": self.tm_update,
            "tm_delete": self.tm_delete,
        })
    }

    fn decide(&self, command: TrunkCommand) -> Result<Vec<TrunkEvent>, DomainError> {
        match command {
            TrunkCommand::Create {
                trunk_id,
                customer_id,
                settings,
                at,
            } => {
                if self.id.is_some() {
                    return Err(DomainError::AlreadyExists(format!(
                        "trunk {trunk_id} exists"
                    )));
                }
                check_settings(&settings)?;
                Ok(vec![TrunkEvent::TrunkCreated {
                    trunk_id,
                    customer_id,
                    settings,
                    at,
                }])
            }
            _ if self.id.is_none() || self.deleted => Err(DomainError::NotFound("trunk")),
            TrunkCommand::Update { settings, at } => {
                check_settings(&settings)?;
                Ok(vec![TrunkEvent::TrunkUpdated { settings, at }])
            }
            TrunkCommand::Delete { at } => Ok(vec![TrunkEvent::TrunkDeleted { at }]),
            TrunkCommand::MarkReachability { reachable, .. }
                if self.reachable == Some(reachable) =>
            {
                Ok(vec![])
            }
            TrunkCommand::MarkReachability {
                reachable,
                code,
                at,
            } => Ok(vec![TrunkEvent::TrunkReachabilityChanged {
                reachable,
                code,
                at,
            }]),
        }
    }

    fn fold(&mut self, event: TrunkEvent) {
        match event {
            TrunkEvent::TrunkCreated {
                trunk_id,
                customer_id,
                settings,
                at,
            } => {
                *self = Trunk {
                    id: Some(trunk_id),
                    customer_id,
                    settings: Some(settings),
                    tm_create: Some(at),
                    tm_update: Some(at),
                    ..Trunk::default()
                }
            }
            TrunkEvent::TrunkUpdated { settings, at } => {
                // Another address: what was found out about the old one no longer holds.
                let moved = self.settings.as_ref().is_none_or(|old| {
                    (&old.host, old.port, old.transport)
                        != (&settings.host, settings.port, settings.transport)
                });
                if moved {
                    self.reachable = None;
                    self.reachability_code = None;
                    self.tm_reachability = None;
                }
                self.settings = Some(settings);
                self.tm_update = Some(at);
            }
            TrunkEvent::TrunkReachabilityChanged {
                reachable,
                code,
                at,
            } => {
                self.reachable = Some(reachable);
                self.reachability_code = code;
                self.tm_reachability = Some(at);
            }
            TrunkEvent::TrunkDeleted { at } => {
                self.deleted = true;
                self.tm_delete = Some(at);
                self.tm_update = Some(at);
            }
        }
    }
}

decided_aggregate!(Trunk, TrunkCommand, TrunkEvent);

impl ResourceView for Trunk {
    fn resource_after(&self, _: &TrunkEvent) -> Value {
        self.view()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::given_nothing;

    fn settings() -> TrunkSettings {
        TrunkSettings {
            name: "carrier".into(),
            host: "sip.carrier.example".into(),
            port: 5060,
            transport: SipTransport::Udp,
            username: Some("acme".into()),
            password_sealed: Some("sealed".into()),
            codecs: vec![Codec::Pcmu, Codec::Pcma],
        }
    }

    fn create(s: TrunkSettings) -> TrunkCommand {
        TrunkCommand::Create {
            trunk_id: TrunkId::new(),
            customer_id: CustomerId::new(),
            settings: s,
            at: Utc::now(),
        }
    }

    #[test]
    fn a_trunk_is_created_updated_and_deleted_its_password_never_shown() {
        let mut t = given_nothing::<Trunk>().and(create(settings()));
        let v = t.view();
        assert_eq!(v["type"], "trunk");
        assert_eq!(v["transport"], "udp");
        assert_eq!(v["codecs"], json!(["PCMU", "PCMA"]));
        assert_eq!(v["password_set"], true);
        assert!(!v.to_string().contains("sealed"), "{v}");
        t.when(TrunkCommand::Update {
            settings: TrunkSettings {
                transport: SipTransport::Tcp,
                password_sealed: None,
                ..settings()
            },
            at: Utc::now(),
        })
        .then_count(1);
        assert_eq!(t.view()["password_set"], false);
        t.when(TrunkCommand::Delete { at: Utc::now() })
            .then_count(1);
        assert_eq!(t.view()["status"], "deleted");
        assert!(matches!(
            t.when(TrunkCommand::Delete { at: Utc::now() })
                .then_refused(),
            DomainError::NotFound(_)
        ));
    }

    #[test]
    fn reachability_is_an_event_only_when_it_changes_and_forgotten_with_the_address() {
        let mark = |reachable, code| TrunkCommand::MarkReachability {
            reachable,
            code,
            at: Utc::now(),
        };
        let mut t = given_nothing::<Trunk>().and(create(settings()));
        assert_eq!(t.view()["reachability"], "unknown");
        t.when(mark(true, Some(200))).then_count(1);
        t.when(mark(true, Some(404))).then_nothing();
        assert_eq!(
            (&t.view()["reachability"], &t.view()["reachability_code"]),
            (&json!("reachable"), &json!(200))
        );
        t.when(mark(false, None)).then_count(1);
        assert_eq!(t.view()["reachability"], "unreachable");
        // A new name keeps it; a new host forgets it.
        let renamed = TrunkSettings {
            name: "renamed".into(),
            ..settings()
        };
        t.when(TrunkCommand::Update {
            settings: renamed,
            at: Utc::now(),
        })
        .then_count(1);
        assert_eq!(t.view()["reachability"], "unreachable");
        let moved = TrunkSettings {
            host: "sip2.carrier.example".into(),
            ..settings()
        };
        t.when(TrunkCommand::Update {
            settings: moved,
            at: Utc::now(),
        })
        .then_count(1);
        assert_eq!(t.view()["reachability"], "unknown");
        t.when(TrunkCommand::Delete { at: Utc::now() })
            .then_count(1);
        assert!(matches!(
            t.when(mark(true, Some(200))).then_refused(),
            DomainError::NotFound(_)
        ));
    }

    #[test]
    fn bad_settings_are_refused_with_the_field_named() {
        for (s, field) in [
            (
                TrunkSettings {
                    name: " ".into(),
                    ..settings()
                },
                "name",
            ),
            (
                TrunkSettings {
                    host: "".into(),
                    ..settings()
                },
                "host",
            ),
            (
                TrunkSettings {
                    host: "bad host".into(),
                    ..settings()
                },
                "host",
            ),
            (
                TrunkSettings {
                    host: "-x.example".into(),
                    ..settings()
                },
                "host",
            ),
            (
                TrunkSettings {
                    port: 0,
                    ..settings()
                },
                "port",
            ),
            (
                TrunkSettings {
                    username: Some("a b".into()),
                    ..settings()
                },
                "username",
            ),
            (
                TrunkSettings {
                    username: None,
                    ..settings()
                },
                "password",
            ),
            (
                TrunkSettings {
                    codecs: vec![],
                    ..settings()
                },
                "codecs",
            ),
            (
                TrunkSettings {
                    codecs: vec![Codec::Pcmu, Codec::Pcmu],
                    ..settings()
                },
                "codecs",
            ),
        ] {
            match given_nothing::<Trunk>().when(create(s)).then_refused() {
                DomainError::Invalid(m) => assert!(m.contains(field), "{m} should name {field}"),
                e => panic!("{e:?}"),
            }
        }
        for ok in ["10.0.0.1", "::1", "sip-1.carrier.example", "localhost"] {
            assert!(host_ok(ok), "{ok}");
        }
        assert!(check_password("").is_err() && check_password("a\nb").is_err());
        assert!(check_password("s3cret!").is_ok());
    }
}
