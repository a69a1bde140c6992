//! Taking custody: a client's submission validated and turned into an envelope, then every
//! envelope (submitted here, or brought by a link) stamped, routed, audited and queued for its
//! next hop or local client, all inside the round's transaction. Refusals become `rejected`
//! or `failed` receipts queued the same way.

use medlink_broker::Accept;
use tracing::{debug, warn};

use super::State;
use crate::envelope::{
    Address, Envelope, Head, Hop, Kind, ReceiptKind, ReceiptStatus, Submission, Transit, MAX_HOPS,
};
use crate::journal::{Dest, Target, Txn};
use crate::route::{NextHop, Policy};

impl State {
    /// A client's submission: validate, stamp, route, queue. `http_id` marks an HTTP
    /// submission: the id to use if the client chose none, and a target known here to be
    /// unreachable is refused instead of accepted with a `failed` receipt.
    pub(super) fn command(
        &mut self,
        tx: &mut Txn,
        client: &str,
        payload: &[u8],
        now: u64,
        http_id: Option<String>,
    ) -> rusqlite::Result<Accept> {
        let sender = Address {
            node: self.me().to_string(),
            client: client.to_string(),
        };
        let strict = http_id.is_some();
        let id = http_id.unwrap_or_else(|| self.next_id());
        let parsed = Submission::parse(payload, self.cfg.limits).and_then(|s| {
            let chosen = s.id.is_some();
            s.into_envelope(sender.clone(), id).map(|e| (chosen, e))
        });
        // A valid submission the sender may still not make: acting as a service it is not a
        // member of, or naming files it may not send.
        let parsed = parsed
            .map_err(|problem| problem.to_string())
            .and_then(|(chosen, env)| match self.not_permitted(client, &env) {
                Some(reason) => Err(reason),
                None => Ok((chosen, env)),
            });
        match parsed {
            Err(reason) => {
                warn!(client, reason = %reason.escape_debug(), "command rejected");
                self.reject(tx, client, payload, &reason, now)?;
                Ok(Accept::Rejected(reason))
            }
            Ok((chosen, mut env)) => {
                if strict {
                    if let NextHop::Unroutable(why) = self.cfg.topology.next_hop(&env.head()) {
                        return Ok(Accept::Unroutable(why));
                    }
                }
                // Idempotency is per sender: another client's choice of id is no concern.
                let key = format!("{}/{}/{}", env.from.node, env.from.client, env.id);
                if chosen && !tx.first_acceptance(&key, now)? {
                    debug!(client, id = %env.id, "resent command ignored (already accepted)");
                    return Ok(Accept::Committed);
                }
                if self.cfg.policy == Policy::ViaRoot && self.cfg.topology.has_parent {
                    env.via_root = true;
                }
                self.stats.accepted();
                let notable =
                    (!env.receipts.is_empty() || env.reply_to.is_some()).then(|| env.clone());
                self.accept(tx, env, now)?;
                if let Some(env) = notable {
                    self.submitted(tx, client, &env, now)?;
                }
                Ok(Accept::Committed)
            }
        }
    }

    /// Why `client` may not send `env` although it is valid, if it may not.
    pub(super) fn not_permitted(&self, client: &str, env: &Envelope) -> Option<String> {
        if let Some(service) = env.as_service.as_deref() {
            if !self.services.is_member(service, client) {
                return Some(format!(
                    "as_service: {client} is not a member of service '{service}' at {}",
                    self.me()
                ));
            }
        }
        self.file_not_sendable(client, env)
    }

    /// Sends `client` a `rejected` receipt for `payload`, saying why.
    pub(super) fn reject(
        &mut self,
        tx: &mut Txn,
        client: &str,
        payload: &[u8],
        reason: &str,
        now: u64,
    ) -> rusqlite::Result<()> {
        self.stats.rejected();
        let sender = Address {
            node: self.me().to_string(),
            client: client.to_string(),
        };
        let rid = self.next_id();
        self.keep_rejected(tx, client, payload, reason, (&rid, now))?;
        let receipt = Envelope::rejection(self.me(), &sender, payload, reason, rid);
        self.accept(tx, receipt, now)
    }

    /// Takes custody of `env` at this node: stamps the trail, routes, audits, queues.
    pub(super) fn accept(
        &mut self,
        tx: &mut Txn,
        mut env: Envelope,
        now: u64,
    ) -> rusqlite::Result<()> {
        env.hops = env.hops.saturating_add(1);
        env.trail.push(Hop {
            node: self.me().to_string(),
            at: now,
        });
        if !self.cfg.topology.has_parent {
            env.via_root = false;
        }
        let dest = self.route(&env.head(), now);
        if self.cfg.audit {
            let decision = match &dest {
                Ok(d) => d.to_string(),
                Err((_, why)) => format!("refused: {why}"),
            };
            tx.audit(&env.head(), now, &decision);
        }
        match dest {
            Ok(dest) => self.place(tx, env, dest, now, true),
            Err((status, why)) => self.refuse(tx, &env, status, &why, now),
        }
    }

    /// Takes custody of an envelope a link brought, as bytes: when this node only stamps and
    /// queues it (on to the next node, or to a local client's stream), the stamp is written
    /// into a copy of the bytes and nothing else is parsed. Everything else (refusals,
    /// services, replies to await, a root clearing `via_root`) goes through [`Self::accept`]
    /// on the envelope parsed whole.
    pub(super) fn pass_on(&mut self, tx: &mut Txn, t: Transit, now: u64) -> rusqlite::Result<()> {
        let mut head = t.head();
        head.hops = head.hops.saturating_add(1);
        let keeps_via_root = !head.via_root || self.cfg.topology.has_parent;
        let dest = self.route(&head, now).ok().filter(|dest| {
            keeps_via_root
                && match dest.target() {
                    Target::Up | Target::Down(_) | Target::Receipts(_) => true,
                    Target::Commands(_) => !t.wants(ReceiptKind::Replied),
                    Target::Service(_) | Target::Files => false,
                }
        });
        let Some(dest) = dest else {
            return match Envelope::parse(t.bytes()) {
                Ok(env) => self.accept(tx, env, now),
                Err(e) => {
                    warn!(id = %head.id, error = %e, "malformed envelope on link dropped");
                    Ok(())
                }
            };
        };
        if self.cfg.audit {
            tx.audit(&head, now, &dest.to_string());
        }
        let body = t.stamp(self.me(), now).into();
        tx.enqueue(&dest, &head, body)?;
        self.clients.enqueued(&dest);
        Ok(())
    }

    /// Where `env` goes from here, or why it goes nowhere.
    pub(super) fn route(&self, env: &Head, now: u64) -> Result<Dest, (ReceiptStatus, String)> {
        let hop = if env.hops > MAX_HOPS {
            NextHop::Unroutable(format!("hop limit of {MAX_HOPS} exceeded"))
        } else if env.expired(now) {
            return Err((ReceiptStatus::Expired, "expired".into()));
        } else {
            self.cfg.topology.next_hop(env)
        };
        let target = match hop {
            NextHop::Local(client) if env.kind == Kind::Receipt => Target::Receipts(client),
            NextHop::Local(client) => Target::Commands(client),
            NextHop::Down(child) => Target::Down(child),
            NextHop::Up => Target::Up,
            NextHop::Service(name) => Target::Service(name),
            NextHop::Unroutable(why) => return Err((ReceiptStatus::Failed, why)),
        };
        Ok(Dest::new(target, env.priority))
    }

    /// Queues `env` for `dest`, unless (`may_hold`) it must wait for its files first.
    pub(super) fn place(
        &mut self,
        tx: &mut Txn,
        env: Envelope,
        dest: Dest,
        now: u64,
        may_hold: bool,
    ) -> rusqlite::Result<()> {
        let body = env.to_bytes().into();
        if !env.files.is_empty() {
            self.touch_files(&env);
        }
        if may_hold && self.hold_for_files(tx, &env, &dest, &body, now)? {
            return Ok(());
        }
        match dest.target() {
            Target::Service(service) => self.route_to_service(tx, service, &env, body, now),
            target => {
                tx.enqueue(&dest, &env.head(), body)?;
                self.clients.enqueued(&dest);
                match target {
                    Target::Commands(client) => {
                        self.grant_files(client, &env);
                        self.expect_reply(tx, client, &env, now)
                    }
                    // The child fetches the files from here.
                    Target::Down(child) => {
                        self.grant_files(child, &env);
                        Ok(())
                    }
                    _ => Ok(()),
                }
            }
        }
    }
}
