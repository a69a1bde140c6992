//! Sending, after a round has committed: heartbeats and go-back timers on the tier links, and
//! the pump that hands every link, client stream and waiting poll what its window allows —
//! urgent lanes first.

use std::time::Instant;

use tracing::warn;

use super::State;
use crate::envelope::{now_ms, Priority};
use crate::frame::Frame;
use crate::journal::Journal;
use crate::links::{Lane, Stale};

impl State {
    /// Heartbeats, stall detection and go-back timers.
    pub(super) fn timers(&mut self) {
        let tuning = self.cfg.tuning;
        if let Some(up) = self.up.as_mut() {
            if up.online {
                if up.last_heard.elapsed() > tuning.dead_after {
                    warn!(
                        silent_ms = up.last_heard.elapsed().as_millis() as u64,
                        "parent link stalled; reconnecting"
                    );
                    up.online = false;
                    self.stats.set_parent_up(false);
                    self.stats.parent_stalled();
                    if let Some(uplink) = &self.uplink {
                        uplink.reconnect();
                    }
                } else if up.last_ping.elapsed() >= tuning.ping_every {
                    up.last_ping = Instant::now();
                    if let Some(uplink) = &self.uplink {
                        uplink.send(Frame::Ping { at: now_ms() }.to_bytes());
                    }
                }
                up.maybe_go_back(&tuning);
            }
        }
        for (child, link) in self.downs.iter_mut() {
            if link.online && link.last_heard.elapsed() > tuning.dead_after {
                warn!(child, "child link stalled");
                link.online = false;
            }
            link.maybe_go_back(&tuning);
        }
    }

    /// Sends whatever the windows allow on every link and to every connected client.
    pub(super) fn pump(&mut self, journal: &mut Journal, now: u64) -> rusqlite::Result<()> {
        let tuning = self.cfg.tuning;
        let mut stale: Vec<Stale> = Vec::new();
        if let Some(up) = self.up.as_mut() {
            let frames = up.next_frames(journal, &tuning, now, &mut stale)?;
            if let Some(uplink) = &self.uplink {
                for f in frames {
                    uplink.send(f);
                }
            }
        }
        let mut down_frames = Vec::new();
        for (child, link) in self.downs.iter_mut() {
            for f in link.next_frames(journal, &tuning, now, &mut stale)? {
                down_frames.push((child.clone(), f));
            }
        }
        for (child, f) in down_frames {
            self.send_down(&child, f.into());
        }
        // Urgent lanes first, so an urgent delivery is published ahead of routine ones.
        let mut ready: Vec<(Priority, String)> = self
            .locals
            .iter()
            .filter(|(_, l)| l.ready())
            .map(|(d, _)| (Priority::of_dest(d).1, d.clone()))
            .collect();
        ready.sort_unstable();
        let ready = ready.into_iter().map(|(_, d)| d);
        for dest in ready {
            self.deliver(journal, &dest, now, &mut stale)?;
        }
        self.serve_polls(journal, now)?;
        if !stale.is_empty() {
            let dests: Vec<String> = stale.iter().map(|s| s.dest.clone()).collect();
            let dropped = (|| {
                let mut tx = journal.begin()?;
                for s in stale {
                    self.drop_stale(&mut tx, &s.dest, s.row, now)?;
                }
                tx.commit()
            })();
            if let Err(e) = dropped {
                // The cursors moved past these envelopes: send them again, so they are
                // found expired again, rather than vanish without a receipt.
                for dest in dests {
                    if let Some(l) = self.locals.get_mut(&dest) {
                        l.rewind(0);
                    } else if let Some((_, lane)) = self.lane_for(&dest) {
                        lane.rewind();
                    }
                }
                return Err(e);
            }
        }
        Ok(())
    }

    /// The outgoing link lane whose journal destination is `dest`, and whether its link is up.
    pub(super) fn lane_for(&mut self, dest: &str) -> Option<(bool, &mut Lane)> {
        let (base, _) = Priority::of_dest(dest);
        let link = match base.strip_prefix("down:") {
            Some(child) => self.downs.get_mut(child),
            None if base == "up" => self.up.as_mut(),
            None => None,
        }?;
        let online = link.online;
        link.lane_for(dest).map(|lane| (online, lane))
    }
}
