//! Service groups in the dispatcher: a command to a service is queued for one online member,
//! and one a member leaves unacknowledged too long moves to another (`services.rs` keeps who
//! has what).

use tracing::{info, warn};

use super::State;
use crate::envelope::{Envelope, ReceiptStatus};
use crate::journal::{Dest, Target, Txn};

impl State {
    /// Queues a command addressed to `service` for one of its members.
    pub(super) fn route_to_service(
        &mut self,
        tx: &mut Txn,
        service: &str,
        env: &Envelope,
        body: bytes::Bytes,
        now: u64,
    ) -> rusqlite::Result<()> {
        let Some(member) = self.services.pick(service, None, false, &self.clients) else {
            return self.refuse(
                tx,
                env,
                ReceiptStatus::Failed,
                "service has no members",
                now,
            );
        };
        self.assign(tx, service, &member, env, body, now)
    }

    fn assign(
        &mut self,
        tx: &mut Txn,
        service: &str,
        member: &str,
        env: &Envelope,
        body: bytes::Bytes,
        now: u64,
    ) -> rusqlite::Result<()> {
        let dest = Dest::new(Target::Commands(member.to_string()), env.priority);
        let lseq = tx.enqueue(&dest, &env.head(), body.clone())?;
        self.clients.enqueued(&dest);
        self.grant_files(member, env);
        self.expect_reply(tx, member, env, now)?;
        self.services
            .assigned(&env.id, (service, member), (dest, lseq), body);
        Ok(())
    }

    /// Moves overdue service commands to another online member.
    pub(super) fn service_timers(&mut self, tx: &mut Txn, now: u64) -> rusqlite::Result<()> {
        for m in self.services.overdue(tx, &self.clients)? {
            if !tx.remove(&m.dest, m.lseq)? {
                continue; // acknowledged or expired meanwhile
            }
            match Envelope::parse(&m.body) {
                Ok(env) if !env.expired(now) => {
                    info!(id = %env.id, service = m.service, from = m.from, to = m.to, "service command moved to another member");
                    self.stats.reassigned();
                    self.assign(tx, &m.service, &m.to, &env, m.body, now)?;
                }
                Ok(env) => self.expire(tx, &env, now)?,
                Err(e) => {
                    warn!(service = m.service, error = %e, "unreadable service command dropped")
                }
            }
        }
        Ok(())
    }
}
