//! The node's log output: one event per line, whatever the event's fields hold.
//!
//! Client-supplied strings reach the log (a SUBSCRIBE filter, an unknown JSON key in a
//! rejected command, a client id). A newline in one of them would print a forged standalone
//! log line, so every event is written through [`OneLine`], which escapes control characters
//! inside the event (`\n`, `\r`, `\u{1b}`...) and keeps only the line's own final newline.
//! JSON logs are escaped by serde already and pass through unchanged.

use std::io::{self, Write};

/// Wraps a writer so that each event it is given comes out as exactly one line.
pub struct OneLine<W> {
    inner: W,
    /// Keep ESC: the formatter's own colour codes on a terminal.
    ansi: bool,
}

impl<W: Write> OneLine<W> {
    /// Escapes what is written to `inner`; `ansi` keeps escape sequences (colour).
    pub fn new(inner: W, ansi: bool) -> Self {
        OneLine { inner, ansi }
    }
}

/// `event` with every control character except tab (and ESC when `ansi`) escaped, ending in
/// exactly one newline.
pub fn one_line(event: &[u8], ansi: bool) -> Vec<u8> {
    let body = event.strip_suffix(b"\n").unwrap_or(event);
    let mut out = Vec::with_capacity(body.len() + 1);
    for &b in body {
        match b {
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.push(b),
            0x1b if ansi => out.push(b),
            0..=0x1f | 0x7f => out.extend_from_slice(format!("\\x{b:02x}").as_bytes()),
            _ => out.push(b),
        }
    }
    out.push(b'\n');
    out
}

impl<W: Write> Write for OneLine<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // tracing-subscriber formats a whole event and writes it with one write_all. Nearly
        // every event is clean and goes out as it is.
        let body = buf.strip_suffix(b"\n").unwrap_or(buf);
        let clean = body
            .iter()
            .all(|&b| !(b < 0x20 || b == 0x7f) || b == b'\t' || (b == 0x1b && self.ansi));
        if clean && body.len() < buf.len() {
            self.inner.write_all(buf)?;
        } else {
            self.inner.write_all(&one_line(buf, self.ansi))?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_newline_in_a_field_cannot_start_a_line() {
        let event = b"WARN filter=\"a\nINFO forged\r\x07\" refused\n";
        let line = one_line(event, false);
        assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1);
        assert_eq!(
            String::from_utf8(line).unwrap(),
            "WARN filter=\"a\\nINFO forged\\r\\x07\" refused\n"
        );
        assert_eq!(
            one_line(b"\x1b[2mcolour\x1b[0m\n", true),
            b"\x1b[2mcolour\x1b[0m\n"
        );
        assert_eq!(one_line(b"\x1b[2m\n", false), b"\\x1b[2m\n");
    }
}
