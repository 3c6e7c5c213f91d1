//! Incremental UTF-8 validation for text messages that arrive in pieces.
//!
//! A text message may be split across frames and reads at any byte, even inside a
//! multi-byte sequence. The validator keeps the few bytes of an unfinished sequence and
//! reports an error as soon as the bytes seen so far can no longer be valid UTF-8, which
//! lets a server close with 1007 before the final fragment arrives.

use simdutf8::compat::from_utf8;

/// The bytes seen so far are not valid UTF-8.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InvalidUtf8;

impl std::fmt::Display for InvalidUtf8 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("invalid UTF-8 in text")
    }
}

impl std::error::Error for InvalidUtf8 {}

/// Validates a byte stream fed in pieces.
#[derive(Clone, Debug, Default)]
pub struct Utf8Validator {
    /// Leading bytes of a sequence cut by the end of the previous piece.
    pending: [u8; 4],
    pending_len: u8,
}

impl Utf8Validator {
    pub const fn new() -> Self {
        Self {
            pending: [0; 4],
            pending_len: 0,
        }
    }

    /// Validates the next piece; fails as soon as an invalid sequence is seen.
    pub fn feed(&mut self, mut bytes: &[u8]) -> Result<(), InvalidUtf8> {
        if self.pending_len > 0 {
            bytes = self.complete_pending(bytes)?;
        }
        match from_utf8(bytes) {
            Ok(_) => Ok(()),
            Err(err) => {
                // `error_len() == None` means the input ended inside a sequence that
                // could still be completed; anything else is invalid now.
                if err.error_len().is_some() {
                    return Err(InvalidUtf8);
                }
                let tail = &bytes[err.valid_up_to()..];
                self.pending[..tail.len()].copy_from_slice(tail);
                self.pending_len = tail.len() as u8;
                Ok(())
            }
        }
    }

    /// Ends the message: a sequence left unfinished is an error. Resets for the next message.
    pub fn finish(&mut self) -> Result<(), InvalidUtf8> {
        let unfinished = self.pending_len > 0;
        self.reset();
        if unfinished { Err(InvalidUtf8) } else { Ok(()) }
    }

    /// Forgets any unfinished sequence.
    pub fn reset(&mut self) {
        self.pending_len = 0;
    }

    /// Whether the validator holds the start of an unfinished sequence.
    pub fn is_mid_sequence(&self) -> bool {
        self.pending_len > 0
    }

    /// Completes the carried-over sequence with bytes from the front of `bytes`, returning
    /// the rest of `bytes` once the sequence is whole (or an empty slice if still unfinished).
    fn complete_pending<'a>(&mut self, bytes: &'a [u8]) -> Result<&'a [u8], InvalidUtf8> {
        let have = self.pending_len as usize;
        let need = sequence_len(self.pending[0]);
        let take = (need - have).min(bytes.len());
        let mut seq = [0u8; 4];
        seq[..have].copy_from_slice(&self.pending[..have]);
        seq[have..have + take].copy_from_slice(&bytes[..take]);
        let filled = have + take;
        match from_utf8(&seq[..filled]) {
            Ok(_) => {
                self.pending_len = 0;
                Ok(&bytes[take..])
            }
            Err(err) if err.error_len().is_none() && filled < need => {
                self.pending = seq;
                self.pending_len = filled as u8;
                Ok(&[])
            }
            Err(_) => Err(InvalidUtf8),
        }
    }
}

/// Validates a whole text message at once.
pub fn validate(bytes: &[u8]) -> Result<&str, InvalidUtf8> {
    simdutf8::basic::from_utf8(bytes).map_err(|_| InvalidUtf8)
}

/// The length of the sequence a lead byte starts; only called on lead bytes that
/// the validator already accepted as the start of an unfinished sequence.
fn sequence_len(lead: u8) -> usize {
    match lead {
        0xC0..=0xDF => 2,
        0xE0..=0xEF => 3,
        _ => 4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed_split(bytes: &[u8], at: &[usize]) -> Result<(), InvalidUtf8> {
        let mut v = Utf8Validator::new();
        let mut start = 0;
        for &cut in at {
            v.feed(&bytes[start..cut])?;
            start = cut;
        }
        v.feed(&bytes[start..])?;
        v.finish()
    }

    #[test]
    fn every_two_way_split_agrees_with_std() {
        let samples: &[&[u8]] = &[
            "κόσμε".as_bytes(),
            "ascii only".as_bytes(),
            "\u{10FFFF}\u{0800}\u{0080}a".as_bytes(),
            b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80edited",
            b"\xf4\x90\x80\x80",
            b"\xc0\xaf",
            b"\xe0\x80\xaf",
            b"abc\xf0\x9f\x98",
            b"\xed\x9f\xbf",
        ];
        for sample in samples {
            let expected = std::str::from_utf8(sample).is_ok();
            for cut in 0..=sample.len() {
                assert_eq!(
                    feed_split(sample, &[cut]).is_ok(),
                    expected,
                    "{sample:?} cut at {cut}"
                );
            }
        }
    }

    #[test]
    fn one_byte_at_a_time() {
        let text = "Hello-µ@ßöäüàá-UTF-8!! 𝄞 ✓".as_bytes();
        let cuts: Vec<usize> = (1..text.len()).collect();
        assert!(feed_split(text, &cuts).is_ok());
    }

    #[test]
    fn fails_fast_on_impossible_prefix() {
        let mut v = Utf8Validator::new();
        v.feed(b"ok \xf4").unwrap();
        // 0xF4 0x90 can never start a valid sequence (beyond U+10FFFF): fail now.
        assert_eq!(v.feed(b"\x90"), Err(InvalidUtf8));
        let mut v = Utf8Validator::new();
        // A surrogate lead (0xED 0xA0) is invalid before the sequence completes.
        v.feed(b"\xed").unwrap();
        assert_eq!(v.feed(b"\xa0"), Err(InvalidUtf8));
    }

    #[test]
    fn unfinished_sequence_at_end_is_invalid() {
        let mut v = Utf8Validator::new();
        v.feed(b"a\xe2\x82").unwrap();
        assert!(v.is_mid_sequence());
        assert_eq!(v.finish(), Err(InvalidUtf8));
        // finish() resets, so the next message starts clean.
        v.feed(b"b").unwrap();
        assert_eq!(v.finish(), Ok(()));
    }
}
