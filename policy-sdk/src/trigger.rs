//! [`LineTrigger`]: act once, when the guest prints a given line on its
//! serial console (or at the first exit).
//!
//! A policy that reads kernel state must wait until the kernel has built
//! it. The console says when: a Debian kernel prints its `Memory:` line
//! in early boot, once its page tables, syscall entry and first task are
//! up. The trigger watches the bytes written to COM1's transmit register
//! (port 0x3F8) and fires on the first completed line that contains the
//! text. The policy declines those writes, so the console still prints.
//!
//! ```
//! use wasmvisor_policy_sdk::testing::exit;
//! use wasmvisor_policy_sdk::trigger::LineTrigger;
//! use wasmvisor_policy_sdk::{Config, ExitKind, Subscriptions};
//!
//! let mut t = LineTrigger::from_config(&Config::from_pairs([("at", "login:")])).unwrap();
//! let subs = t.subscribe(Subscriptions::new());
//! assert_eq!(subs.ports[0].first, 0x3f8);
//! let mut fired = 0;
//! for b in b"debian login: \n".iter().chain(b"debian login: \n") {
//!     let ExitKind::Io(io) = exit::io_write(0x3f8, 1, u32::from(*b)) else { unreachable!() };
//!     fired += usize::from(t.on_io(&io));
//! }
//! assert_eq!(fired, 1); // once only
//! assert!(t.fired());
//! ```

use crate::{Config, Direction, IoExit, Subscriptions};

/// COM1's base port: the transmit holding register (THR) on a write.
pub const COM1: u16 = 0x3f8;
/// The config key that names the trigger.
pub const KEY: &str = "at";
/// The `at` value meaning "at the first exit".
pub const AT_INIT: &str = "init";
/// The default text: the line a Debian kernel prints in early boot
/// (`Memory: 2005756K/2096632K available ...`).
pub const DEFAULT_AT: &str = "Memory:";
/// The longest line kept; the bytes past it, up to the newline, are
/// dropped (the text must lie within the first 4 KiB of a line).
pub const MAX_LINE: usize = 4096;

/// Fires once: at the first completed console line (ended by `\n`) that
/// contains a text, or at the first exit for `at=init`. See the
/// [module docs](self).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineTrigger {
    /// The text to look for; `None` for `at=init`.
    text: Option<String>,
    /// The line so far.
    line: Vec<u8>,
    fired: bool,
}

impl LineTrigger {
    /// Fires at the first line containing `at`, or at the first exit when
    /// `at` is `init`.
    pub fn new(at: &str) -> Self {
        LineTrigger {
            text: (at != AT_INIT).then(|| at.to_string()),
            line: Vec::new(),
            fired: false,
        }
    }

    /// The trigger the config's `at` key names ([`DEFAULT_AT`] without
    /// one); an empty text is an error. Remember [`KEY`] in
    /// [`Config::check_keys`].
    pub fn from_config(config: &Config) -> Result<Self, String> {
        match config.get(KEY) {
            None => Ok(Self::new(DEFAULT_AT)),
            Some("") => Err(format!(
                "config key `{KEY}`: give the text of a console line, or `{AT_INIT}`"
            )),
            Some(at) => Ok(Self::new(at)),
        }
    }

    /// Adds what the trigger needs to see: port 0x3F8.
    pub fn subscribe(&self, subscriptions: Subscriptions) -> Subscriptions {
        subscriptions.port(COM1)
    }

    /// The text looked for; `None` for `at=init`.
    pub fn text(&self) -> Option<&str> {
        self.text.as_deref()
    }

    /// What the trigger waits for, in words, for log lines.
    pub fn describe(&self) -> String {
        match &self.text {
            Some(text) => format!("console line containing {text:?}"),
            None => "first exit".to_string(),
        }
    }

    /// True once the trigger has fired.
    pub fn fired(&self) -> bool {
        self.fired
    }

    /// Takes one port exit; true exactly once, when the trigger fires.
    /// For `at=init` that is the first exit of any kind; otherwise the
    /// write to [`COM1`] whose `\n` completes a line holding the text
    /// (the low byte of the data is the character written).
    pub fn on_io(&mut self, io: &IoExit) -> bool {
        if self.fired {
            return false;
        }
        let Some(text) = &self.text else {
            self.fired = true;
            return true;
        };
        if io.port != COM1 || io.direction != Direction::Write {
            return false;
        }
        let byte = io.data as u8;
        if byte != b'\n' {
            if self.line.len() < MAX_LINE {
                self.line.push(byte);
            }
            return false;
        }
        let needle = text.as_bytes();
        let hit = needle.is_empty() || self.line.windows(needle.len()).any(|w| w == needle);
        self.line.clear();
        if hit {
            self.fired = true;
            self.line = Vec::new();
        }
        hit
    }

    /// [`on_io`](Self::on_io), once per VM: every vCPU's instance watches
    /// its own console writes, and the first to see the line (counted in
    /// the shared counter `key`) does the work.
    pub fn once_per_vm(&mut self, io: &IoExit, key: &str) -> bool {
        self.on_io(io) && crate::host::counter_add(key, 1) == 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::exit;
    use crate::ExitKind;

    fn io(kind: ExitKind) -> IoExit {
        match kind {
            ExitKind::Io(io) => io,
            other => panic!("{other:?}"),
        }
    }

    /// Feeds `text` to the trigger as COM1 writes; the indexes of the
    /// bytes at which it fired.
    fn feed(t: &mut LineTrigger, text: &[u8]) -> Vec<usize> {
        let mut fired = Vec::new();
        for (i, b) in text.iter().enumerate() {
            if t.on_io(&io(exit::io_write(COM1, 1, u32::from(*b)))) {
                fired.push(i);
            }
        }
        fired
    }

    #[test]
    fn config() {
        let t = LineTrigger::from_config(&Config::default()).unwrap();
        assert_eq!(t.text(), Some("Memory:"));
        assert_eq!(t.describe(), "console line containing \"Memory:\"");
        let t = LineTrigger::from_config(&Config::from_pairs([("at", "init")])).unwrap();
        assert_eq!((t.text(), t.describe().as_str()), (None, "first exit"));
        let err = LineTrigger::from_config(&Config::from_pairs([("at", "")])).unwrap_err();
        assert!(err.contains("`at`"), "{err}");
        let subs = t.subscribe(Subscriptions::new().port(0x80));
        let ports: Vec<_> = subs.ports.iter().map(|p| (p.first, p.last)).collect();
        assert_eq!(ports, [(0x80, 0x80), (COM1, COM1)]);
    }

    #[test]
    fn fires_once_at_the_end_of_the_matching_line() {
        let mut t = LineTrigger::new("Memory:");
        let boot = b"[    0.000000] Linux version 6.1\r\n\
                     [    0.012345] Memory: 2005756K/2096632K available\r\n\
                     [    0.020000] Memory: again\r\n";
        let fired = feed(&mut t, boot);
        let end = boot.iter().position(|&b| b == b'K').unwrap();
        assert_eq!(fired.len(), 1);
        assert!(fired[0] > end && boot[fired[0]] == b'\n');
        assert!(t.fired());
        // Not before the newline.
        let mut t = LineTrigger::new("Memory:");
        assert!(feed(&mut t, b"Memory: 1K").is_empty());
        assert!(!t.fired());
        assert_eq!(feed(&mut t, b"\n"), [0]);
    }

    #[test]
    fn only_com1_writes_count() {
        let mut t = LineTrigger::new("ab");
        for kind in [
            exit::io_write(0x2f8, 1, u32::from(b'a')),
            exit::io_read(COM1, 1),
            exit::io_write(COM1 + 1, 1, u32::from(b'a')),
        ] {
            assert!(!t.on_io(&io(kind)));
        }
        assert!(feed(&mut t, b"b\n").is_empty());
        // The low byte of a wider write is the character.
        assert!(!t.on_io(&io(exit::io_write(COM1, 2, 0x0161))));
        assert_eq!(feed(&mut t, b"b\n"), [1]);
    }

    #[test]
    fn lines_are_bounded() {
        let mut t = LineTrigger::new("needle");
        let mut long = vec![b'x'; MAX_LINE - 3];
        long.extend_from_slice(b"needle\n");
        assert!(feed(&mut t, &long).is_empty());
        // The next line starts afresh.
        assert_eq!(feed(&mut t, b"needle\n"), [6]);
    }

    #[test]
    fn init_fires_at_the_first_exit_of_any_kind() {
        let mut t = LineTrigger::new(AT_INIT);
        assert!(t.on_io(&io(exit::io_read(COM1, 1))));
        assert!(!t.on_io(&io(exit::io_read(COM1, 1))));
        assert!(feed(&mut t, b"init\n").is_empty());
    }
}
