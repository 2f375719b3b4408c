//! Interactive shells: the lines a job submits, rebuilt from its keystrokes.
//!
//! What this can and cannot see. The gateway sees the keys the job's terminal sends, not the
//! shell's line buffer. It applies the common editing keys (backspace, Ctrl-U, Ctrl-W, Ctrl-C)
//! and takes Enter as "submit". It cannot follow cursor movement, history recall, tab completion,
//! shell aliases and functions, multi-line constructs or what a submitted line makes a program
//! read next; lines that used such keys are recorded with `edited: true` and are still checked as
//! typed. A blocked line never reaches the host as a command (the gateway sends Ctrl-C in place of
//! Enter), but an interactive shell is not a sandbox: deny `shell` for identities that must be
//! held to exact command rules, and let them use `ssh host CMD`, which policy sees exactly.

/// Longest line kept; longer input is still forwarded, the recorded line is cut.
const MAX_LINE: usize = 4096;

/// One step of a keystroke chunk.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Key {
    /// Bytes `start..end` of the chunk are ordinary input: forward them.
    Input(usize, usize),
    /// The byte at this offset submits `line` (the Enter key).
    Submit {
        at: usize,
        line: String,
        edited: bool,
    },
}

#[derive(Default)]
pub(super) struct LineEditor {
    line: Vec<u8>,
    edited: bool,
    /// Inside an escape sequence (arrow keys and friends).
    escape: Escape,
}

#[derive(Default, Clone, Copy, PartialEq, Eq)]
enum Escape {
    #[default]
    None,
    Start,
    Csi,
    Ss3,
}

impl LineEditor {
    /// Splits a chunk of keystrokes into input to forward and submitted lines.
    pub(super) fn feed(&mut self, data: &[u8]) -> Vec<Key> {
        let mut out = Vec::new();
        let mut from = 0;
        for (i, &b) in data.iter().enumerate() {
            match self.escape {
                Escape::Start => {
                    self.escape = match b {
                        b'[' => Escape::Csi,
                        b'O' => Escape::Ss3,
                        _ => Escape::None,
                    };
                    continue;
                }
                Escape::Csi => {
                    if (0x40..=0x7e).contains(&b) {
                        self.escape = Escape::None;
                    }
                    continue;
                }
                Escape::Ss3 => {
                    self.escape = Escape::None;
                    continue;
                }
                Escape::None => {}
            }
            match b {
                b'\r' | b'\n' => {
                    if i > from {
                        out.push(Key::Input(from, i));
                    }
                    from = i + 1;
                    let line = String::from_utf8_lossy(&self.line).into_owned();
                    out.push(Key::Submit {
                        at: i,
                        line,
                        edited: self.edited,
                    });
                    self.line.clear();
                    self.edited = false;
                }
                0x7f | 0x08 => {
                    // Remove one UTF-8 character.
                    while let Some(c) = self.line.pop() {
                        if c & 0xc0 != 0x80 {
                            break;
                        }
                    }
                }
                0x15 | 0x03 => {
                    // Ctrl-U kills the line, Ctrl-C abandons it.
                    self.line.clear();
                    self.edited = false;
                }
                0x17 => {
                    // Ctrl-W: the word before the cursor, and the blanks after it.
                    while self.line.last() == Some(&b' ') {
                        self.line.pop();
                    }
                    while self.line.last().is_some_and(|&c| c != b' ') {
                        self.line.pop();
                    }
                }
                0x1b => {
                    self.escape = Escape::Start;
                    self.edited = true;
                }
                b'\t' => self.edited = true,
                c if c < 0x20 => self.edited = true,
                c => {
                    if self.line.len() < MAX_LINE {
                        self.line.push(c);
                    }
                }
            }
        }
        if from < data.len() {
            out.push(Key::Input(from, data.len()));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(chunks: &[&[u8]]) -> Vec<(String, bool)> {
        let mut ed = LineEditor::default();
        chunks
            .iter()
            .flat_map(|c| ed.feed(c))
            .filter_map(|k| match k {
                Key::Submit { line, edited, .. } => Some((line, edited)),
                Key::Input(..) => None,
            })
            .collect()
    }

    #[test]
    fn keystrokes_become_lines() {
        assert_eq!(
            lines(&[b"l", b"s -l", b"\r"]),
            vec![("ls -l".to_string(), false)]
        );
        assert_eq!(
            lines(&[b"rm -rf /tmpx\x7f\r"]),
            vec![("rm -rf /tmp".to_string(), false)]
        );
        assert_eq!(
            lines(&[b"echo hi\x15whoami\r", b"a b\x17c\r"]),
            vec![("whoami".to_string(), false), ("a c".to_string(), false)]
        );
        assert_eq!(
            lines(&[b"\x1b[Als\r"]),
            vec![("ls".to_string(), true)],
            "history recall is flagged as edited"
        );
        assert_eq!(lines(&[b"h\xc3\xa9\x7f\r"]), vec![("h".to_string(), false)]);
    }

    #[test]
    fn chunks_split_around_enter() {
        let mut ed = LineEditor::default();
        let keys = ed.feed(b"ab\rcd");
        assert_eq!(
            keys,
            vec![
                Key::Input(0, 2),
                Key::Submit {
                    at: 2,
                    line: "ab".into(),
                    edited: false
                },
                Key::Input(3, 5)
            ]
        );
    }
}
