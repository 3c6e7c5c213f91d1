//! Sec-WebSocket-Extensions (RFC 6455 §9.1): offers and their parameters.
//!
//! A malformed offer is left out rather than failing the handshake: declining an extension
//! is always a valid answer.

/// One extension offer (or a server's response), parameters in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExtensionOffer {
    pub name: String,
    /// Quoted-string values are unquoted.
    pub params: Vec<(String, Option<String>)>,
}

/// Parses every offer of the given header values; malformed ones are skipped.
pub fn parse_offers<'a>(values: impl Iterator<Item = &'a str>) -> Vec<ExtensionOffer> {
    values
        .flat_map(split_outside_quotes::<','>)
        .filter_map(parse_offer)
        .collect()
}

fn parse_offer(text: &str) -> Option<ExtensionOffer> {
    let mut parts = split_outside_quotes::<';'>(text).into_iter();
    let name = parts.next()?.trim();
    if !is_token(name) {
        return None;
    }
    let mut params = Vec::new();
    for part in parts {
        let part = part.trim();
        let (key, value) = match part.split_once('=') {
            None => (part, None),
            Some((key, value)) => (key.trim(), Some(parse_value(value.trim())?)),
        };
        if !is_token(key) {
            return None;
        }
        params.push((key.to_owned(), value));
    }
    Some(ExtensionOffer {
        name: name.to_owned(),
        params,
    })
}

/// A token or a quoted-string (whose content must itself be a token, RFC 6455 §9.1).
fn parse_value(value: &str) -> Option<String> {
    let unquoted = match value.strip_prefix('"') {
        Some(rest) => rest.strip_suffix('"')?.replace('\\', ""),
        None => value.to_owned(),
    };
    is_token(&unquoted).then_some(unquoted)
}

fn is_token(text: &str) -> bool {
    !text.is_empty() && text.bytes().all(super::head::is_token_byte)
}

/// Splits on `SEP` where it is not inside a quoted string.
fn split_outside_quotes<const SEP: char>(text: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, c) in text.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            c if c == SEP && !quoted => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts.into_iter().filter(|p| !p.trim().is_empty()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer(name: &str, params: &[(&str, Option<&str>)]) -> ExtensionOffer {
        ExtensionOffer {
            name: name.into(),
            params: params
                .iter()
                .map(|(k, v)| (k.to_string(), v.map(str::to_string)))
                .collect(),
        }
    }

    #[test]
    fn offers_in_several_headers_with_quotes() {
        let offers = parse_offers(
            [
                "permessage-deflate; client_max_window_bits; server_max_window_bits=\"10\"",
                "permessage-deflate, x-webkit-deflate-frame",
            ]
            .into_iter(),
        );
        assert_eq!(
            offers,
            [
                offer(
                    "permessage-deflate",
                    &[
                        ("client_max_window_bits", None),
                        ("server_max_window_bits", Some("10"))
                    ]
                ),
                offer("permessage-deflate", &[]),
                offer("x-webkit-deflate-frame", &[]),
            ]
        );
    }

    #[test]
    fn malformed_offers_are_left_out() {
        let offers = parse_offers(
            [
                "bad name; x, ok; a=\"unterminated",
                "good; p=\"1\"",
                "; =",
                "x; =1",
            ]
            .into_iter(),
        );
        assert_eq!(offers, [offer("good", &[("p", Some("1"))])]);
    }
}
