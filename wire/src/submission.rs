//! The submission: what a client sends to its outbox (`org/<node>/<client>/out`) or POSTs to
//! `/v1/messages` (`topics.md`, "the outbox"). The SDK writes it with this struct, the first
//! node parses it with this struct and holds it to the rules below ([`Submission::parse`]),
//! then stamps the authenticated sender into an [`Envelope`] ([`Submission::into_envelope`]).

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::address::{check_node_id, valid_client, valid_id, Address, MessageId, ID_RULE};
use crate::envelope::ReceiptKind;
use crate::envelope::{now_ms, Envelope, Params};
use crate::error::FieldError;
use crate::file::{FileRef, MAX_FILES};
use crate::priority::Priority;

/// Deepest nesting of arrays and objects allowed in `params` (the array or object that
/// `params` itself is counts as level 1). Every reader of an envelope, the SDK's serde_json
/// included (it stops at 128 levels), must be able to parse what the node accepts.
pub const MAX_PARAMS_DEPTH: usize = 64;

/// The longest command name, in bytes.
pub const MAX_CMD: usize = 128;

/// What a client sends. The node refuses unknown keys (`deny_unknown_fields`), so writers
/// leave out what is not set. `P` holds the parameters: unparsed at the node
/// (`Box<RawValue>`), borrowed from the application's value in the SDK (`&Value`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Submission<P> {
    /// Optional client-chosen id: resending the same id is idempotent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<MessageId>,
    /// If present it must equal the authenticated sender; `from` is never trusted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<Address>,
    /// Target.
    pub to: Address,
    /// Command name.
    pub cmd: String,
    /// Parameters (`null` when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params: Option<P>,
    /// Id of the command this answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<MessageId>,
    /// Answering for this service group at the sender's node (checked there: the sender must
    /// be a member).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub as_service: Option<String>,
    /// Time to live in ms from acceptance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_ms: Option<u64>,
    /// Absolute expiry, Unix ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
    /// Priority class (`urgent`, `normal`, `bulk`, or 0–9); normal when absent. An explicit
    /// `null` is refused like any other value that is not a class.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present_priority"
    )]
    pub priority: Option<Priority>,
    /// Positive receipts the sender wants (`accepted`, `delivered`, `replied`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub receipts: Vec<ReceiptKind>,
    /// Files the command refers to (uploaded first; at most [`MAX_FILES`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<FileRef>,
}

/// A `priority` key that is present must name a class (`Option`'s own rule would take `null`).
fn present_priority<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Priority>, D::Error> {
    Priority::deserialize(d).map(Some)
}

/// Limits a node applies to submissions.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest outbox payload, bytes.
    pub max_payload: usize,
}

/// How deeply arrays and objects nest in a valid JSON text (one pass, no recursion). Strings
/// are skipped with `memchr` to their closing quote: params are mostly string bytes, and the
/// first node checks the depth of every command's params.
pub fn json_depth(json: &str) -> usize {
    let bytes = json.as_bytes();
    let (mut depth, mut deepest, mut i) = (0usize, 0usize, 0usize);
    while let Some(&b) = bytes.get(i) {
        match b {
            b'"' => loop {
                // `i` is on the opening quote or the byte after an escape's backslash.
                let rest = bytes.get(i + 1..).unwrap_or_default();
                match memchr::memchr2(b'"', b'\\', rest) {
                    Some(k) if rest[k] == b'\\' => i += k + 2,
                    Some(k) => {
                        i += k + 1;
                        break;
                    }
                    None => return deepest,
                }
            },
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    deepest
}

impl Submission<Box<RawValue>> {
    /// Parses and validates an outbox payload, as the first node does.
    pub fn parse(payload: &[u8], limits: Limits) -> Result<Self, FieldError> {
        if payload.len() > limits.max_payload {
            return Err(FieldError {
                too_large: true,
                ..FieldError::new(
                    "payload",
                    format!(
                        "{} bytes exceeds the limit of {} bytes",
                        payload.len(),
                        limits.max_payload
                    ),
                )
            });
        }
        // The plain parser on the hot path; the path-tracking one only to name a field at fault.
        let s: Self = serde_json::from_slice(payload).map_err(|_| field_error(payload))?;
        if let Some(p) = &s.params {
            // Each level takes two bytes, so short params cannot be too deep.
            if p.get().len() > 2 * MAX_PARAMS_DEPTH && json_depth(p.get()) > MAX_PARAMS_DEPTH {
                return Err(FieldError::new(
                    "params",
                    format!("nests deeper than {MAX_PARAMS_DEPTH} levels of arrays and objects"),
                ));
            }
        }
        s.check()?;
        Ok(s)
    }
}

impl<P> Submission<P> {
    /// The field rules of `topics.md` that serde does not enforce.
    fn check(&self) -> Result<(), FieldError> {
        if let Some(id) = &self.id {
            if !valid_id(id) {
                return Err(FieldError::new("id", format!("must be {ID_RULE}")));
            }
        }
        if let Err(problem) = check_node_id(&self.to.node) {
            return Err(FieldError::new("to.node", problem));
        }
        if !valid_client(&self.to.client) {
            return Err(FieldError::new(
                "to.client",
                "must be 1-128 characters without + # /",
            ));
        }
        if self.cmd.is_empty() || self.cmd.len() > MAX_CMD {
            return Err(FieldError::new("cmd", "must be 1-128 characters"));
        }
        if matches!(self.ttl_ms, Some(0)) {
            return Err(FieldError::new("ttl_ms", "must be positive"));
        }
        if self.ttl_ms.is_some() && self.expires_at.is_some() {
            return Err(FieldError::new(
                "ttl_ms",
                "give either ttl_ms or expires_at, not both",
            ));
        }
        if let Some(r) = &self.reply_to {
            if !valid_id(r) {
                return Err(FieldError::new("reply_to", "must be a message id"));
            }
        }
        if let Some(service) = &self.as_service {
            if !valid_client(service) {
                return Err(FieldError::new("as_service", "must be a service name"));
            }
        }
        if self.files.len() > MAX_FILES {
            return Err(FieldError::new(
                "files",
                format!("at most {MAX_FILES} files per command"),
            ));
        }
        for (i, file) in self.files.iter().enumerate() {
            if let Err((field, problem)) = file.check() {
                return Err(FieldError::new(&format!("files[{i}].{field}"), problem));
            }
        }
        Ok(())
    }
}

impl<P: Params> Submission<P> {
    /// Turns the submission into an envelope sent by `sender`, stamped now; `id` unless the
    /// submission chose one.
    pub fn into_envelope(self, sender: Address, id: MessageId) -> Result<Envelope<P>, FieldError> {
        if let Some(claimed) = &self.from {
            if *claimed != sender {
                return Err(FieldError::new(
                    "from",
                    format!(
                        "claims {}/{} but the connection is authenticated as {}/{}",
                        claimed.node, claimed.client, sender.node, sender.client
                    ),
                ));
            }
        }
        let created_at = now_ms();
        let params = self.params.unwrap_or_else(P::null);
        let id = self.id.unwrap_or(id);
        Ok(Envelope {
            reply_to: self.reply_to,
            as_service: self.as_service,
            expires_at: self
                .expires_at
                .or(self.ttl_ms.map(|t| created_at.saturating_add(t))),
            priority: self.priority.unwrap_or_default(),
            receipts: self.receipts,
            files: self.files,
            ..Envelope::new(id, sender, self.to, self.cmd, params, created_at)
        })
    }
}

/// Parses `payload` again, tracking the path, to name the field at fault of a submission that
/// did not parse.
fn field_error(payload: &[u8]) -> FieldError {
    let tracked: Result<Submission<Box<RawValue>>, _> =
        serde_path_to_error::deserialize(&mut serde_json::Deserializer::from_slice(payload));
    let Err(e) = tracked else {
        return FieldError::new("payload", "not a valid submission");
    };
    let path = e.path().to_string();
    let named = FieldError::from_json(e.inner());
    match path.as_str() {
        // The whole document, or serde named the field in its message.
        "." | "" => named,
        // A bad class says so without a position (its value is short and the field is named).
        "priority" => {
            let problem = named.problem.split(" at line").next().unwrap_or_default();
            FieldError::new(&path, problem)
        }
        _ => FieldError::new(&path, named.problem),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    const L: Limits = Limits { max_payload: 1024 };

    fn sender() -> Address {
        Address::new("js.nj", "c1")
    }

    #[test]
    fn errors_name_the_field() {
        let e = Submission::parse(br#"{"cmd":"x"}"#, L).unwrap_err();
        assert_eq!(e.field, "to");
        let e = Submission::parse(br#"{"to":{"node":"a","client":"b"},"cmd":7}"#, L).unwrap_err();
        assert_eq!(e.field, "cmd", "{e}");
        assert!(e.problem.contains("invalid type"), "{e}");
        assert!(!e.too_large);
        // Type errors name their field and are not size errors (the probe saw 413s).
        let e = Submission::parse(
            br#"{"to":{"node":"a","client":"b"},"cmd":"x","ttl_ms":-1}"#,
            L,
        )
        .unwrap_err();
        assert_eq!((e.field.as_str(), e.too_large), ("ttl_ms", false), "{e}");
        let e = Submission::parse(
            br#"{"to":{"node":"a","client":"b"},"cmd":"x","receipts":["rejected"]}"#,
            L,
        )
        .unwrap_err();
        assert_eq!(
            (e.field.as_str(), e.too_large),
            ("receipts[0]", false),
            "{e}"
        );
        let e =
            Submission::parse(br#"{"to":{"node":"a..b","client":"b"},"cmd":"x"}"#, L).unwrap_err();
        assert_eq!(e.field, "to.node");
        let e = Submission::parse(br#"{"to":{"node":"a","client":"b"},"cmd":"x","prio":1}"#, L)
            .unwrap_err();
        assert_eq!(e.field, "prio");
        let e = Submission::parse(b"not json", L).unwrap_err();
        assert_eq!(e.field, "payload");
        let e = Submission::parse(
            br#"{"id":"a/b","to":{"node":"a","client":"b"},"cmd":"x"}"#,
            L,
        )
        .unwrap_err();
        assert_eq!(e.to_string(), format!("id: must be {ID_RULE}"));
        let big = format!(
            r#"{{"to":{{"node":"a","client":"b"}},"cmd":"x","params":"{}"}}"#,
            "x".repeat(2000)
        );
        let e = Submission::parse(big.as_bytes(), L).unwrap_err();
        assert_eq!((e.field.as_str(), e.too_large), ("payload", true));
    }

    #[test]
    fn params_nest_at_most_the_documented_depth() {
        let nested = |levels: usize| {
            format!(
                r#"{{"to":{{"node":"a","client":"b"}},"cmd":"x","params":{}{}}}"#,
                "[".repeat(levels),
                "]".repeat(levels)
            )
        };
        let limits = Limits {
            max_payload: 1 << 20,
        };
        let at_limit = nested(MAX_PARAMS_DEPTH);
        assert_eq!(json_depth(&at_limit) - 1, MAX_PARAMS_DEPTH);
        Submission::parse(at_limit.as_bytes(), limits).expect("the limit itself is accepted");
        let e = Submission::parse(nested(MAX_PARAMS_DEPTH + 1).as_bytes(), limits).unwrap_err();
        assert_eq!(e.field, "params", "{e}");
        // Brackets inside strings do not count.
        assert_eq!(json_depth(r#"{"a":"[[[[\"{{"}"#), 1);
        assert_eq!(
            json_depth(r#"{"a":"x\\","b":[[1]]}"#),
            3,
            "an escaped backslash ends no string"
        );
        assert_eq!(json_depth(r#"["\u005b[", {"k": "\\\"]"}, []]"#), 2);
        assert_eq!(json_depth(r#"{"open": "never closed"#), 1);
        assert_eq!(json_depth(r#"["ends in a backslash \"#), 1);
    }

    #[test]
    fn priorities_parse_by_name_and_old_number_and_name_the_field_when_wrong() {
        let class = |p: &str| {
            let text = format!(r#"{{"to":{{"node":"a","client":"b"}},"cmd":"x","priority":{p}}}"#);
            Submission::parse(text.as_bytes(), L)
                .and_then(|s| s.into_envelope(sender(), "1".into()))
                .map(|e| e.priority)
        };
        assert_eq!(class(r#""urgent""#), Ok(Priority::Urgent));
        assert_eq!(class(r#""bulk""#), Ok(Priority::Bulk));
        assert_eq!(
            class("0"),
            Ok(Priority::Normal),
            "the old routine stays normal"
        );
        assert_eq!(class("9"), Ok(Priority::Urgent));
        for bad in [r#""high""#, "10", "-1", "true", "null"] {
            assert_eq!(class(bad).unwrap_err().field, "priority", "{bad}");
        }
        assert_eq!(
            class(r#""high""#).unwrap_err().problem,
            "unknown priority `high`: use urgent, normal or bulk"
        );
        assert_eq!(
            class("10").unwrap_err().problem,
            "priority 10 out of range: use urgent, normal or bulk (or 0..=9)"
        );
    }

    #[test]
    fn forged_from_is_refused_and_ttl_sets_expiry() {
        let s = Submission::parse(
            br#"{"from":{"node":"js.nj","client":"evil"},"to":{"node":"a","client":"b"},"cmd":"x"}"#,
            L,
        )
        .unwrap();
        assert_eq!(
            s.into_envelope(sender(), "1".into()).unwrap_err().field,
            "from"
        );
        let s = Submission::parse(
            br#"{"to":{"node":"a","client":"b"},"cmd":"x","ttl_ms":1000,"params":{"k":[1,2]}}"#,
            L,
        )
        .unwrap();
        let e = s.into_envelope(sender(), "01ABC".into()).unwrap();
        assert_eq!(e.expires_at, Some(e.created_at + 1000));
        assert_eq!(e.params.get(), r#"{"k":[1,2]}"#);
        let back: Envelope<Box<RawValue>> = Envelope::parse(&e.to_bytes()).unwrap();
        assert_eq!(back.id, "01ABC");
        assert_eq!(back.from, sender());
    }

    #[test]
    fn file_references_are_checked_field_by_field() {
        let sha = "ab".repeat(32);
        let with = |files: &str| {
            let body =
                format!(r#"{{"to":{{"node":"js","client":"b"}},"cmd":"c","files":{files}}}"#);
            Submission::parse(body.as_bytes(), Limits { max_payload: 16384 })
        };
        let good = format!(
            r#"[{{"sha256":"{sha}","size":5,"name":"r.pdf","media_type":"application/pdf"}}]"#
        );
        let env = with(&good)
            .unwrap()
            .into_envelope(sender(), "i".into())
            .unwrap();
        assert_eq!(env.files.len(), 1);
        assert_eq!(env.files[0].sha256, sha);
        let e = with(r#"[{"sha256":"nope","size":5}]"#).unwrap_err();
        assert_eq!(e.field, "files[0].sha256", "{e}");
        let e = with(&format!(r#"[{{"sha256":"{sha}","size":5,"path":"/etc"}}]"#)).unwrap_err();
        assert_eq!(e.field, "files[0].path", "{e}");
        let many = format!(
            "[{}]",
            vec![format!(r#"{{"sha256":"{sha}","size":1}}"#); 33].join(",")
        );
        assert_eq!(with(&many).unwrap_err().field, "files");
    }

    #[test]
    fn what_a_writer_leaves_out_the_node_reads_as_default() {
        let params = Value::Null;
        let s = Submission {
            id: Some("x1".into()),
            from: None,
            to: Address::new("js", "b"),
            cmd: "c".into(),
            params: Some(&params),
            reply_to: None,
            as_service: None,
            ttl_ms: None,
            expires_at: None,
            priority: None,
            receipts: Vec::new(),
            files: Vec::new(),
        };
        let body = serde_json::to_vec(&s).unwrap();
        assert_eq!(
            std::str::from_utf8(&body).unwrap(),
            r#"{"id":"x1","to":{"node":"js","client":"b"},"cmd":"c","params":null}"#
        );
        let e = Submission::parse(&body, L)
            .and_then(|s| s.into_envelope(sender(), "other".into()))
            .unwrap();
        assert_eq!((e.id.as_str(), e.priority), ("x1", Priority::Normal));
    }
}
