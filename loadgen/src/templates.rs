//! `--payload FILE|DIR`: real messages for servers that expect them, each carrying the
//! integrity stamp in a JSON field the server echoes.
//!
//! A file holds one JSON object per line; a directory holds one per file (taken in name
//! order). Every message sent is one of them with `"FIELD":"STAMP",` put first inside its
//! braces, and goes out as a text frame. Which one is sent follows from the sender and the
//! sequence number alone (in order, or pseudo-randomly), so an echo is checked against the
//! exact bytes it should be without remembering what was sent.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::payload::{Corrupt, Stamp};

/// In which order a connection sends the messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Order {
    /// The first message, then the second, ..., then the first again.
    InOrder,
    /// A pseudo-random one each time (the same for the same sender and sequence number).
    Random,
}

#[derive(Debug)]
pub struct Templates {
    /// Each message's text after its opening brace, and whether anything but the closing
    /// brace is in it (then the stamp's field needs a comma after it).
    messages: Vec<(Vec<u8>, bool)>,
    /// `"FIELD":"`: what precedes the stamp.
    prefix: Vec<u8>,
    order: Order,
}

/// Why the payload file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}{}: not JSON ({error})", path.display(), Line(*line))]
    NotJson {
        path: PathBuf,
        line: Option<usize>,
        error: serde_json::Error,
    },
    #[error("{}{}: a message must be a JSON object, to carry the stamp in a field", path.display(), Line(*line))]
    NotObject { path: PathBuf, line: Option<usize> },
    #[error("{}{}: the message already has a `{field}` field, where the stamp goes", path.display(), Line(*line))]
    HasField {
        path: PathBuf,
        line: Option<usize>,
        field: String,
    },
    #[error("{}: no messages in it", path.display())]
    Empty { path: PathBuf },
    #[error("the stamp field name `{0}` needs no escaping: use letters, digits, `_` or `-`")]
    FieldName(String),
}

/// `:LINE` after a file name, when the messages are lines.
struct Line(Option<usize>);

impl fmt::Display for Line {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(line) => write!(f, ":{line}"),
            None => Ok(()),
        }
    }
}

impl Templates {
    /// Loads the messages of `path` (a JSON-lines file or a directory of JSON files); the
    /// stamp goes in `field`.
    pub fn load(path: &Path, field: &str, order: Order) -> Result<Templates, TemplateError> {
        if field.is_empty()
            || !field
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(TemplateError::FieldName(field.to_owned()));
        }
        let read = |path: &Path| {
            std::fs::read_to_string(path).map_err(|source| TemplateError::Read {
                path: path.to_owned(),
                source,
            })
        };
        let mut texts = Vec::new();
        if path.is_dir() {
            let entries = std::fs::read_dir(path).map_err(|source| TemplateError::Read {
                path: path.to_owned(),
                source,
            })?;
            let mut files: Vec<PathBuf> = entries
                .filter_map(|entry| entry.ok().map(|e| e.path()))
                .filter(|p| p.is_file())
                .collect();
            files.sort();
            for file in files {
                let text = read(&file)?;
                texts.push((file, None, text.trim().to_owned()));
            }
        } else {
            let text = read(path)?;
            for (number, line) in text.lines().enumerate() {
                if !line.trim().is_empty() {
                    texts.push((path.to_owned(), Some(number + 1), line.trim().to_owned()));
                }
            }
        }
        if texts.is_empty() {
            return Err(TemplateError::Empty {
                path: path.to_owned(),
            });
        }
        let mut messages = Vec::with_capacity(texts.len());
        for (path, line, text) in texts {
            let value: serde_json::Value =
                serde_json::from_str(&text).map_err(|error| TemplateError::NotJson {
                    path: path.clone(),
                    line,
                    error,
                })?;
            let Some(object) = value.as_object() else {
                return Err(TemplateError::NotObject { path, line });
            };
            if object.contains_key(field) {
                return Err(TemplateError::HasField {
                    path,
                    line,
                    field: field.to_owned(),
                });
            }
            // A JSON object's text starts with its brace once trimmed.
            let rest = text.as_bytes()[1..].to_vec();
            messages.push((rest, !object.is_empty()));
        }
        Ok(Templates {
            messages,
            prefix: format!("\"{field}\":\"").into_bytes(),
            order,
        })
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.messages.len()
    }

    /// The longest message with its stamp (about: the stamp's text varies).
    pub fn typical_len(&self) -> usize {
        let longest = self.messages.iter().map(|m| m.0.len()).max().unwrap_or(0);
        longest + self.prefix.len() + 48
    }

    /// The message that `sender` sends as its `sequence`-th.
    fn pick(&self, sender: u32, sequence: u32) -> usize {
        let n = self.messages.len() as u64;
        match self.order {
            Order::InOrder => (u64::from(sequence) % n) as usize,
            Order::Random => {
                // splitmix64 over the pair: spread, and the same on both ends.
                let mut x = (u64::from(sender) << 32 | u64::from(sequence))
                    .wrapping_add(0x9E37_79B9_7F4A_7C15);
                x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
                ((x ^ (x >> 31)) % n) as usize
            }
        }
    }

    /// Appends the message that carries `stamp`.
    pub fn write(&self, stamp: &Stamp, out: &mut Vec<u8>) {
        let index = self.pick(stamp.sender, stamp.sequence);
        let (rest, fields) = &self.messages[index];
        out.push(b'{');
        out.extend_from_slice(&self.prefix);
        out.extend_from_slice(stamp.to_text(index as u32).as_bytes());
        out.push(b'"');
        if *fields {
            out.push(b',');
        }
        out.extend_from_slice(rest);
    }

    /// Reads the stamp of an arrived message and checks the message byte for byte.
    pub fn read(&self, message: &[u8]) -> Result<Stamp, Corrupt> {
        let body = message
            .strip_prefix(b"{")
            .and_then(|m| m.strip_prefix(&self.prefix[..]))
            .ok_or(Corrupt::Checksum)?;
        let end = body
            .iter()
            .position(|&b| b == b'"')
            .ok_or(Corrupt::Checksum)?;
        let text = std::str::from_utf8(&body[..end]).map_err(|_| Corrupt::Checksum)?;
        let mut parts = text.split('-').map(str::parse::<u32>);
        let (Some(Ok(sender)), Some(Ok(sequence))) = (parts.next(), parts.next()) else {
            return Err(Corrupt::Checksum);
        };
        let index = self.pick(sender, sequence);
        let stamp = Stamp::from_text(text, index as u32)?;
        let (rest, fields) = &self.messages[index];
        let after = &body[end + 1..];
        let after = if *fields {
            after.strip_prefix(b",").ok_or(Corrupt::Filler)?
        } else {
            after
        };
        if after != &rest[..] {
            return Err(Corrupt::Filler);
        }
        Ok(stamp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn templates(lines: &str, order: Order) -> Templates {
        let dir = std::env::temp_dir().join(format!("ringws-templates-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join(format!("{order:?}.jsonl"));
        std::fs::write(&path, lines).expect("write");
        let templates = Templates::load(&path, "ringws", order);
        let _ = std::fs::remove_file(&path);
        templates.expect("templates")
    }

    #[test]
    fn messages_round_trip_and_any_change_is_caught() {
        let t = templates(
            "{\"a\": 1, \"b\": [2, 3]}\n\n{}\n{\"c\":\"x\"}\n",
            Order::InOrder,
        );
        assert_eq!(t.len(), 3);
        for sequence in 0..6 {
            let stamp = Stamp {
                sender: 4,
                sequence,
                sent_at_ns: 77,
            };
            let mut out = Vec::new();
            t.write(&stamp, &mut out);
            let value: serde_json::Value = serde_json::from_slice(&out).expect("still JSON");
            assert!(value["ringws"].is_string());
            assert_eq!(t.read(&out), Ok(stamp));
            for at in 0..out.len() {
                let mut bad = out.clone();
                bad[at] ^= 0x20;
                assert!(
                    t.read(&bad).is_err(),
                    "byte {at} of {}",
                    String::from_utf8_lossy(&out)
                );
            }
        }
    }

    #[test]
    fn random_order_uses_every_message_and_is_reproducible() {
        let t = templates(
            "{\"n\":0}\n{\"n\":1}\n{\"n\":2}\n{\"n\":3}\n",
            Order::Random,
        );
        let picks: Vec<usize> = (0..64).map(|s| t.pick(9, s)).collect();
        assert_eq!(picks, (0..64).map(|s| t.pick(9, s)).collect::<Vec<_>>());
        for n in 0..4 {
            assert!(picks.contains(&n), "message {n} never picked");
        }
    }

    #[test]
    fn bad_files_are_refused_with_their_line() {
        let dir = std::env::temp_dir().join(format!("ringws-templates-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("bad.jsonl");
        std::fs::write(&path, "{\"a\":1}\n[1,2]\n").expect("write");
        let error = Templates::load(&path, "ringws", Order::InOrder).expect_err("an array");
        assert!(
            error.to_string().ends_with(
                "bad.jsonl:2: a message must be a JSON object, to carry the stamp in a field"
            ),
            "{error}"
        );
        std::fs::write(&path, "{\"ringws\":1}\n").expect("write");
        assert!(Templates::load(&path, "ringws", Order::InOrder).is_err());
        assert!(Templates::load(&path, "a\"b", Order::InOrder).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
