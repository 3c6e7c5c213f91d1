//! Where a topic lives on the broker: a NATS subject or a Redis channel, so that backends
//! can publish to a topic without a WebSocket.
//!
//! NATS: `PREFIX.` followed by the topic as one subject token. A token cannot hold `.`
//! (the token separator), `*` or `>` (wildcards) or whitespace, and subjects are best kept
//! ASCII, so every byte outside printable ASCII and each of `. * > %` is written `%XX`
//! (upper-case hex): topic `prices.eu` is subject `ringws.prices%2Eeu`. Redis: `PREFIX:`
//! followed by the topic as it is, since a channel name is any byte string and the node
//! never subscribes with patterns.

use std::fmt::Write as _;

/// The NATS subject of `topic`.
pub(crate) fn nats_subject(prefix: &str, topic: &str) -> String {
    let mut subject = String::with_capacity(prefix.len() + 1 + topic.len());
    subject.push_str(prefix);
    subject.push('.');
    for &byte in topic.as_bytes() {
        if needs_escape(byte) {
            let _ = write!(subject, "%{byte:02X}");
        } else {
            subject.push(char::from(byte));
        }
    }
    subject
}

/// The topic of a NATS subject made by [`nats_subject`] with `prefix`, or `None` when the
/// subject is not one: another prefix, a bad escape, or bytes that are not UTF-8.
pub(crate) fn topic_of_subject(prefix: &str, subject: &str) -> Option<String> {
    let token = subject.strip_prefix(prefix)?.strip_prefix('.')?;
    let bytes = token.as_bytes();
    let mut topic = Vec::with_capacity(bytes.len());
    let mut at = 0;
    while at < bytes.len() {
        if bytes[at] == b'%' {
            let hex = token.get(at + 1..at + 3)?;
            topic.push(u8::from_str_radix(hex, 16).ok()?);
            at += 3;
        } else {
            topic.push(bytes[at]);
            at += 1;
        }
    }
    String::from_utf8(topic).ok().filter(|t| !t.is_empty())
}

/// The Redis channel of `topic`.
pub(crate) fn redis_channel(prefix: &str, topic: &str) -> String {
    format!("{prefix}:{topic}")
}

/// The topic of a Redis channel made by [`redis_channel`] with `prefix`.
pub(crate) fn topic_of_channel<'a>(prefix: &str, channel: &'a [u8]) -> Option<&'a str> {
    let rest = channel
        .strip_prefix(prefix.as_bytes())?
        .strip_prefix(b":")?;
    std::str::from_utf8(rest).ok().filter(|t| !t.is_empty())
}

/// Whether `prefix` can start every subject: dot-separated tokens, none empty, without
/// wildcards, whitespace or the escape character.
pub(crate) fn check_prefix(prefix: &str) -> Result<(), String> {
    if prefix.is_empty() {
        return Err("the prefix must not be empty".into());
    }
    if prefix.split('.').any(str::is_empty) {
        return Err(format!("`{prefix}` has an empty subject token"));
    }
    if let Some(bad) = prefix
        .bytes()
        .find(|&b| b != b'.' && (needs_escape(b) || b == b':'))
    {
        return Err(format!(
            "`{prefix}` holds `{}`, which subjects or channels would misread",
            char::from(bad).escape_default()
        ));
    }
    Ok(())
}

fn needs_escape(byte: u8) -> bool {
    !(0x21..0x7f).contains(&byte) || matches!(byte, b'.' | b'*' | b'>' | b'%')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_escape_what_nats_would_misread_and_read_back() {
        assert_eq!(nats_subject("ringws", "prices"), "ringws.prices");
        assert_eq!(
            nats_subject("ringws", "a.b *>% c/é"),
            "ringws.a%2Eb%20%2A%3E%25%20c/%C3%A9"
        );
        for topic in ["prices", "a.b *>% c/é", "%41", "..", ">"] {
            let subject = nats_subject("app.ws", topic);
            assert!(!subject["app.ws.".len()..].contains(['.', '*', '>', ' ']));
            assert_eq!(topic_of_subject("app.ws", &subject).as_deref(), Some(topic));
        }
        assert_eq!(topic_of_subject("ringws", "other.prices"), None);
        assert_eq!(topic_of_subject("ringws", "ringws.bad%4"), None);
        assert_eq!(topic_of_subject("ringws", "ringws.%FF"), None, "not UTF-8");
        assert_eq!(topic_of_subject("ringws", "ringws."), None);
    }

    #[test]
    fn channels_carry_the_topic_as_it_is() {
        assert_eq!(redis_channel("ringws", "a.b *"), "ringws:a.b *");
        assert_eq!(topic_of_channel("ringws", b"ringws:a.b *"), Some("a.b *"));
        assert_eq!(topic_of_channel("ringws", b"ringwsx:a"), None);
        assert_eq!(topic_of_channel("ringws", b"ringws:"), None);
    }

    #[test]
    fn prefixes_are_checked() {
        assert!(check_prefix("ringws").is_ok());
        assert!(check_prefix("acme.ws").is_ok());
        for bad in ["", "a..b", ".a", "a*", "a b", "a>", "a:b", "a%"] {
            assert!(check_prefix(bad).is_err(), "{bad}");
        }
    }
}
