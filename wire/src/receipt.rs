//! Receipts: what a receipt says ([`ReceiptStatus`]) and its parameters ([`Receipt`]); what a
//! sender may ask for is [`ReceiptKind`], a field of the envelope. A receipt is an envelope of kind
//! `receipt` from `<node>/$medlink` to the command's sender whose `params` are
//! `{by, cmd, reason, ref, status, to}`. Nodes build them here ([`Envelope::receipt`] on the
//! node's form), applications read them here ([`Envelope::receipt`] on the application's
//! form), so both sides agree on the keys.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;

use crate::address::{Address, MessageId};
use crate::envelope::{now_ms, Envelope, Kind, Params, ReceiptKind};

/// How long a receipt waits for its client before it is dropped.
pub const RECEIPT_TTL_MS: u64 = 7 * 24 * 3600 * 1000;

/// The sender name of every receipt (`from.client`); `$` cannot occur in a client name.
pub const RECEIPT_SENDER: &str = "$medlink";

/// What a receipt says about a command.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ReceiptStatus {
    /// The first node took custody (asked for with [`ReceiptKind::Accepted`]).
    Accepted,
    /// The target's node handed it to the target (asked for with [`ReceiptKind::Delivered`]).
    Delivered,
    /// The target replied (asked for with [`ReceiptKind::Replied`]).
    Replied,
    /// It expired before delivery.
    Expired,
    /// The first node refused it (invalid, forged sender, over the rate).
    Rejected,
    /// No route to the target.
    Failed,
    /// A node holds the command until the files it refers to are there (asked for with
    /// [`ReceiptKind::Delivered`]); it moves on by itself once they are.
    FilesPending,
    /// A status this version does not know yet (a newer node).
    Other(String),
}

impl ReceiptStatus {
    /// From the wire string.
    pub fn from_wire(s: &str) -> Self {
        match s {
            "accepted" => ReceiptStatus::Accepted,
            "delivered" => ReceiptStatus::Delivered,
            "replied" => ReceiptStatus::Replied,
            "expired" => ReceiptStatus::Expired,
            "rejected" => ReceiptStatus::Rejected,
            "failed" => ReceiptStatus::Failed,
            "files_pending" => ReceiptStatus::FilesPending,
            other => ReceiptStatus::Other(other.to_string()),
        }
    }

    /// The wire string.
    pub fn as_wire(&self) -> &str {
        match self {
            ReceiptStatus::Accepted => "accepted",
            ReceiptStatus::Delivered => "delivered",
            ReceiptStatus::Replied => "replied",
            ReceiptStatus::Expired => "expired",
            ReceiptStatus::Rejected => "rejected",
            ReceiptStatus::Failed => "failed",
            ReceiptStatus::FilesPending => "files_pending",
            ReceiptStatus::Other(s) => s,
        }
    }

    /// Whether the command will never reach its target.
    pub fn is_failure(&self) -> bool {
        matches!(
            self,
            ReceiptStatus::Expired | ReceiptStatus::Rejected | ReceiptStatus::Failed
        )
    }
}

impl std::fmt::Display for ReceiptStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_wire())
    }
}

impl From<&str> for ReceiptStatus {
    fn from(s: &str) -> Self {
        ReceiptStatus::from_wire(s)
    }
}

impl From<ReceiptKind> for ReceiptStatus {
    fn from(k: ReceiptKind) -> Self {
        ReceiptStatus::from_wire(k.as_str())
    }
}

impl Serialize for ReceiptStatus {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_wire())
    }
}

impl<'de> Deserialize<'de> for ReceiptStatus {
    /// Any string: a status this version does not know is [`ReceiptStatus::Other`].
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(ReceiptStatus::from_wire(&String::deserialize(d)?))
    }
}

/// A receipt's parameters. On the wire the keys `by`, `cmd`, `reason`, `ref`, `status`, `to`
/// (in that order: nodes write them as a sorted JSON object). Reading is lenient, so a
/// receipt from an older or newer node still reads; what is missing is empty or `None`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    /// The node that issued it.
    #[serde(default)]
    pub by: Option<String>,
    /// That command's `cmd`.
    #[serde(default)]
    pub cmd: String,
    /// Why, in words (empty for positive receipts).
    #[serde(default)]
    pub reason: Option<String>,
    /// The id of the command it is about (`ref`; empty if the node could not read one).
    #[serde(default, rename = "ref")]
    pub about: MessageId,
    /// What happened.
    #[serde(default = "unknown_status")]
    pub status: ReceiptStatus,
    /// That command's target.
    #[serde(default)]
    pub to: Option<Address>,
}

fn unknown_status() -> ReceiptStatus {
    ReceiptStatus::Other(String::new())
}

impl Receipt {
    /// The params as a node writes them: every key present, objects with sorted keys (as
    /// `serde_json::json!` wrote them before this type existed, so the bytes stay the same).
    fn to_raw(&self) -> Box<RawValue> {
        let value = serde_json::to_value(self).expect("a Receipt always serialises");
        RawValue::from_string(value.to_string()).expect("serde_json output is valid JSON")
    }
}

/// Building receipts: done by nodes, which hold params unparsed.
impl Envelope<Box<RawValue>> {
    /// A receipt about this envelope for its sender, issued by `node`.
    pub fn receipt(
        &self,
        node: &str,
        status: impl Into<ReceiptStatus>,
        reason: &str,
        id: MessageId,
    ) -> Envelope<Box<RawValue>> {
        let params = Receipt {
            by: Some(node.to_string()),
            cmd: self.cmd.clone(),
            reason: Some(reason.to_string()),
            about: self.id.clone(),
            status: status.into(),
            to: Some(self.to.clone()),
        };
        let now = now_ms();
        let from = Address::new(node, RECEIPT_SENDER);
        let to = self.from.clone();
        Envelope {
            kind: Kind::Receipt,
            reply_to: (!self.id.is_empty()).then(|| self.id.clone()),
            // A client that never reads its receipts must not make them pile up forever.
            expires_at: Some(now + RECEIPT_TTL_MS),
            priority: self.priority,
            ..Envelope::new(id, from, to, "receipt".into(), params.to_raw(), now)
        }
    }

    /// A `rejected` receipt for a submission `payload` from `sender` that could not be turned
    /// into an envelope; its `id` and `cmd` are read from the payload where possible.
    pub fn rejection(
        node: &str,
        sender: &Address,
        payload: &[u8],
        reason: &str,
        id: MessageId,
    ) -> Envelope<Box<RawValue>> {
        #[derive(Deserialize)]
        struct MaybeId {
            id: Option<String>,
            cmd: Option<String>,
        }
        let guess = serde_json::from_slice::<MaybeId>(payload).ok();
        let original: Envelope<Box<RawValue>> = Envelope::new(
            guess
                .as_ref()
                .and_then(|g| g.id.clone())
                .unwrap_or_default(),
            sender.clone(),
            sender.clone(),
            guess.and_then(|g| g.cmd).unwrap_or_default(),
            Params::null(),
            now_ms(),
        );
        original.receipt(node, ReceiptStatus::Rejected, reason, id)
    }
}

/// Reading receipts: done by applications, which hold params as JSON values.
impl Envelope<Value> {
    /// For a receipt: its parameters, typed. `None` for commands.
    pub fn receipt(&self) -> Option<Receipt> {
        if self.kind != Kind::Receipt {
            return None;
        }
        Some(Receipt::deserialize(&self.params).unwrap_or(Receipt {
            by: None,
            cmd: String::new(),
            reason: None,
            about: String::new(),
            status: unknown_status(),
            to: None,
        }))
    }

    /// For a receipt: its status (`rejected`, `failed`, `expired`, ...).
    pub fn receipt_status(&self) -> Option<&str> {
        self.receipt_text("status")
    }

    /// For a receipt: the id of the command it is about.
    pub fn receipt_for(&self) -> Option<&str> {
        self.receipt_text("ref")
    }

    fn receipt_text(&self, key: &str) -> Option<&str> {
        (self.kind == Kind::Receipt)
            .then(|| self.params.get(key).and_then(Value::as_str))
            .flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::priority::Priority;

    fn command() -> Envelope<Box<RawValue>> {
        Envelope {
            priority: Priority::Urgent,
            ..Envelope::new(
                "x1".into(),
                Address::new("js.nj.t1", "a"),
                Address::new("js", "nobody"),
                "c".into(),
                Params::null(),
                0,
            )
        }
    }

    #[test]
    fn nodes_write_what_applications_read() {
        let r = command().receipt("js", "failed", "no client", "r.failed.x1".into());
        // The bytes nodes have always written: a sorted object, `to` sorted too.
        assert_eq!(
            r.params.get(),
            r#"{"by":"js","cmd":"c","reason":"no client","ref":"x1","status":"failed","to":{"client":"nobody","node":"js"}}"#
        );
        assert_eq!((r.kind, r.priority), (Kind::Receipt, Priority::Urgent));
        assert_eq!(r.from, Address::new("js", RECEIPT_SENDER));
        assert_eq!(r.to, Address::new("js.nj.t1", "a"));
        assert_eq!(r.reply_to.as_deref(), Some("x1"));
        assert!(r.expires_at.is_some());
        let read: Envelope<Value> = Envelope::parse(&r.to_bytes()).unwrap();
        let got = read.receipt().unwrap();
        assert_eq!(got.status, ReceiptStatus::Failed);
        assert!(got.status.is_failure());
        assert_eq!(got.about, "x1");
        assert_eq!(got.to, Some(Address::new("js", "nobody")));
        assert_eq!(got.reason.as_deref(), Some("no client"));
        assert_eq!(got.by.as_deref(), Some("js"));
        assert_eq!(read.receipt_status(), Some("failed"));
        assert_eq!(read.receipt_for(), Some("x1"));
    }

    #[test]
    fn rejections_name_what_they_can() {
        let me = Address::new("js", "a");
        let r = Envelope::rejection(
            "js",
            &me,
            br#"{"id":"q","cmd":"z","to":1}"#,
            "bad",
            "r".into(),
        );
        let read: Envelope<Value> = Envelope::parse(&r.to_bytes()).unwrap();
        let got = read.receipt().unwrap();
        assert_eq!(
            (got.status, got.about.as_str(), got.cmd.as_str()),
            (ReceiptStatus::Rejected, "q", "z")
        );
        let r = Envelope::rejection("js", &me, b"not json", "bad", "r".into());
        assert_eq!(r.reply_to, None, "nothing to refer to");
    }

    #[test]
    fn kinds_and_statuses_have_one_spelling() {
        for k in ReceiptKind::ALL {
            assert_eq!(k.to_string().parse::<ReceiptKind>(), Ok(k));
            assert_eq!(serde_json::to_string(&k).unwrap(), format!("\"{k}\""));
            assert_eq!(ReceiptStatus::from(k).as_wire(), k.as_str());
        }
        assert!("rejected".parse::<ReceiptKind>().is_err());
        assert_eq!(
            ReceiptStatus::from_wire("later"),
            ReceiptStatus::Other("later".into())
        );
        let commands: Envelope<Value> = serde_json::from_value(serde_json::json!({
            "id": "1", "from": {"node": "a", "client": "b"}, "to": {"node": "a", "client": "c"},
            "cmd": "x", "params": {"status": "failed"}, "created_at": 1
        }))
        .unwrap();
        assert_eq!(commands.receipt(), None);
        assert_eq!(commands.receipt_status(), None);
    }
}
