//! Properties over generated messages and garbage: any split gives the same events, the
//! decoder never panics, and what one side writes the other reads.

use proptest::prelude::*;

use super::*;

/// One message of a generated stream, with how to fragment it.
#[derive(Clone)]
struct Msg {
    text: bool,
    payload: Vec<u8>,
    /// Fragment boundaries as fractions of the payload.
    splits: Vec<usize>,
    /// A ping to interleave after the first fragment.
    ping: Option<Vec<u8>>,
}

impl std::fmt::Debug for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Msg {{ text: {}, len: {}, splits: {:?}, ping: {:?} }}",
            self.text,
            self.payload.len(),
            self.splits,
            self.ping.as_ref().map(Vec::len)
        )
    }
}

fn msg_strategy() -> impl Strategy<Value = Msg> {
    (
        any::<bool>(),
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..300),
            proptest::collection::vec(any::<u8>(), 60_000..70_000)
        ],
        proptest::collection::vec(0usize..1000, 0..4),
        proptest::option::of(proptest::collection::vec(any::<u8>(), 0..=125)),
    )
        .prop_map(|(text, payload, splits, ping)| {
            // Text payloads: make them valid UTF-8 of about the same size.
            let payload = if text {
                String::from_utf8_lossy(&payload).into_owned().into_bytes()
            } else {
                payload
            };
            Msg {
                text,
                payload,
                splits,
                ping,
            }
        })
}

/// Encodes messages as client frames and lists the events a server must see.
fn encode(msgs: &[Msg]) -> (Vec<u8>, Vec<Seen>) {
    let mut stream = Vec::new();
    let mut expected = Vec::new();
    for msg in msgs {
        let mut cuts: Vec<usize> = msg
            .splits
            .iter()
            .map(|s| s * msg.payload.len() / 1000)
            .collect();
        cuts.sort_unstable();
        cuts.dedup();
        cuts.push(msg.payload.len());
        let mut start = 0;
        for (i, &end) in cuts.iter().enumerate() {
            let opcode = match (i, msg.text) {
                (0, true) => OpCode::Text,
                (0, false) => OpCode::Binary,
                _ => OpCode::Continuation,
            };
            stream.extend(cframe(
                opcode,
                i + 1 == cuts.len(),
                &msg.payload[start..end.max(start)],
            ));
            start = end.max(start);
            if i == 0
                && let Some(ping) = &msg.ping
            {
                stream.extend(cframe(OpCode::Ping, true, ping));
            }
        }
        let message = if msg.text {
            Seen::Text(String::from_utf8(msg.payload.clone()).unwrap())
        } else {
            Seen::Binary(msg.payload.clone())
        };
        // The ping follows the first frame: inside the message if it has several, else after it.
        let ping = msg.ping.clone().map(Seen::Ping);
        if cuts.len() > 1 {
            expected.extend(ping);
            expected.push(message);
        } else {
            expected.push(message);
            expected.extend(ping);
        }
    }
    (stream, expected)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn any_split_gives_the_same_events(
        msgs in proptest::collection::vec(msg_strategy(), 1..6),
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..40),
    ) {
        let (stream, expected) = encode(&msgs);
        let cuts: Vec<usize> = cuts.iter().map(|i| i.index(stream.len())).collect();
        let (whole, whole_out) = feed(Role::Server, SessionConfig::default(), &stream, &[]);
        let (split, split_out) = feed(Role::Server, SessionConfig::default(), &stream, &cuts);
        prop_assert_eq!(&whole, &expected);
        prop_assert_eq!(&split, &expected);
        prop_assert_eq!(whole_out, split_out);
    }

    #[test]
    fn garbage_never_panics_and_fails_with_a_wire_code(bytes in proptest::collection::vec(any::<u8>(), 0..600), cut in any::<prop::sample::Index>()) {
        for role in [Role::Server, Role::Client] {
            let cut = cut.index(bytes.len() + 1);
            let (seen, _) = feed(role, SessionConfig { max_message_size: 256, ..SessionConfig::default() }, &bytes, &[cut]);
            if let Some(Seen::Failed(code)) = seen.last() {
                prop_assert!(CloseCode::new(*code).is_valid_on_wire());
            }
        }
    }

    #[test]
    fn client_to_server_and_back(msgs in proptest::collection::vec(msg_strategy(), 1..6)) {
        let mut client = Session::new(Role::Client, SessionConfig::default());
        let mut server = Session::new(Role::Server, SessionConfig::default());
        let mut wire = Vec::new();
        for msg in &msgs {
            if msg.text {
                client.writer.send_text(std::str::from_utf8(&msg.payload).unwrap(), &mut wire).unwrap();
            } else {
                client.writer.send_binary(&msg.payload, &mut wire).unwrap();
            }
        }
        // Server echoes each message it reads; the client reads the echoes.
        let mut echoed = Vec::new();
        let mut rest = &mut wire[..];
        while !rest.is_empty() {
            let (used, event) = server.read(rest, &mut echoed).unwrap();
            match event {
                Some(Event::Text(t)) => write_frame(&mut echoed, FrameHead::whole(OpCode::Text), t.as_bytes(), None),
                Some(Event::Binary(b)) => write_frame(&mut echoed, FrameHead::whole(OpCode::Binary), b, None),
                _ => {}
            }
            rest = &mut rest[used..];
        }
        let (back, _) = feed(Role::Client, SessionConfig::default(), &echoed, &[]);
        let (_, expected) = encode(&msgs.iter().map(|m| Msg { ping: None, ..m.clone() }).collect::<Vec<_>>());
        prop_assert_eq!(back, expected);
    }
}
