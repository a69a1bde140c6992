//! Open long-polls and event streams per identity, capped like MQTT connections are
//! (`max_connections_per_identity`), so one login cannot hold a thousand streams open.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::http::StatusCode;

use super::error::ApiError;

/// Counts each identity's open streams.
#[derive(Debug)]
pub struct StreamSlots {
    limit: usize,
    open: Arc<Mutex<HashMap<String, usize>>>,
}

/// One open stream; the identity's count drops when it does.
#[derive(Debug)]
pub struct StreamSlot {
    identity: String,
    open: Arc<Mutex<HashMap<String, usize>>>,
}

impl StreamSlots {
    /// At most `limit` open streams per identity.
    pub fn new(limit: usize) -> Self {
        StreamSlots {
            limit,
            open: Arc::default(),
        }
    }

    /// Takes a slot for `identity`, or 429 `too_many_streams` when it has `limit` open.
    pub fn open(&self, identity: &str) -> Result<StreamSlot, ApiError> {
        let mut open = self
            .open
            .lock()
            .expect("stream slots lock is never held across a panic");
        let count = open.entry(identity.to_string()).or_default();
        if *count >= self.limit {
            tracing::warn!(identity = %identity.escape_debug(), limit = self.limit, "HTTP stream refused: identity at its stream limit");
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_streams",
                format!(
                    "identity '{identity}' already has {} long-polls or event streams open here (the limit); close one first",
                    self.limit
                ),
            ));
        }
        *count += 1;
        Ok(StreamSlot {
            identity: identity.to_string(),
            open: self.open.clone(),
        })
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut open = self
            .open
            .lock()
            .expect("stream slots lock is never held across a panic");
        if let Some(count) = open.get_mut(&self.identity) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.identity);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_holds_per_identity_and_frees_on_drop() {
        let slots = StreamSlots::new(2);
        let a = slots.open("a").unwrap();
        let _a2 = slots.open("a").unwrap();
        assert!(slots.open("a").is_err());
        let _b = slots.open("b").expect("another identity has its own slots");
        drop(a);
        let _a3 = slots.open("a").expect("a slot frees when its stream ends");
    }
}
