//! The publish API: `POST /publish/<topic>` publishes its body, `POST /publish` a batch of
//! messages to many topics (JSON). A backend feeds topics through it with a key
//! (`Authorization: Bearer KEY`), over connections it may keep open, and the messages take
//! the same path as a WebSocket publisher's: numbered, framed once, queued to each shard.
//!
//! The head is checked before a byte of the body is read: the key, the target, the length
//! (`Content-Length` is required; a chunked body gets 411, one over the message size limit
//! 413). The answer is JSON: the subscribers each message reached, or the problem.

use std::borrow::Cow;
use std::fmt::Write as _;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::json;

use crate::proto::handshake::{Refusal, Request, reason_phrase};

use super::admission::Admission;
use super::app::Message;
use super::config::ServerConfig;
use super::pubsub::ShardTopics;

/// The batch endpoint; a topic's is below it.
const BATCH_PATH: &str = "/publish";
const TOPIC_PREFIX: &str = "/publish/";
/// Publishes one batch may ask for, so that one request cannot hold a shard for long.
pub(crate) const MAX_BATCH: usize = 10_000;

/// Whether a request is for the publish API: plain HTTP (not an upgrade) on its paths.
pub(crate) fn is_api_request(request: &Request) -> bool {
    let path = request.path();
    (path == BATCH_PATH || path.starts_with(TOPIC_PREFIX)) && request.header("upgrade").is_none()
}

/// What the request publishes.
#[derive(Debug)]
enum Target {
    /// Its body, to one topic, as a text message or a binary one.
    Topic { name: Box<str>, text: bool },
    /// A JSON list of messages.
    Batch,
}

/// A publish request whose head passed its checks, reading its body.
#[derive(Debug)]
pub(crate) struct PublishBody {
    target: Target,
    length: usize,
    body: Vec<u8>,
    keep_alive: bool,
    expects_continue: bool,
}

/// An answer of the API: a status and a JSON body.
pub(crate) struct Answer {
    pub status: u16,
    body: String,
    headers: Vec<(&'static str, Cow<'static, str>)>,
    /// The connection stays open for the next request.
    pub keep_alive: bool,
}

impl Answer {
    fn json(status: u16, body: serde_json::Value, keep_alive: bool) -> Self {
        Self {
            status,
            body: body.to_string(),
            headers: Vec::new(),
            keep_alive,
        }
    }

    /// A refusal as JSON (`{"error": ...}`), with its headers; the connection closes after.
    pub fn refused(refusal: Refusal) -> Self {
        Self {
            status: refusal.status,
            body: json!({ "error": refusal.message }).to_string(),
            headers: refusal.headers,
            keep_alive: false,
        }
    }

    pub fn write(&self, out: &mut Vec<u8>) {
        let mut head = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
            self.status,
            reason_phrase(self.status),
            self.body.len() + 1
        );
        if !self.keep_alive {
            head.push_str("Connection: close\r\n");
        }
        for (name, value) in &self.headers {
            if !name.contains(['\r', '\n']) && !value.contains(['\r', '\n']) {
                let _ = write!(head, "{name}: {value}\r\n");
            }
        }
        head.push_str("\r\n");
        out.extend_from_slice(head.as_bytes());
        out.extend_from_slice(self.body.as_bytes());
        out.push(b'\n');
    }
}

/// The interim answer to `Expect: 100-continue`: send the body.
pub(crate) const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// Checks a publish request's head: the method, the key, the target, the body's framing
/// and length. The body is read only once all of them pass.
pub(crate) fn start(
    request: &Request,
    admission: &Admission,
    config: &ServerConfig,
) -> Result<Box<PublishBody>, Answer> {
    let refuse = |refusal: Refusal| Err(Answer::refused(refusal));
    if request.method() != "POST" {
        return refuse(
            Refusal::new(405, "the publish API takes POST").with_header("Allow", "POST"),
        );
    }
    admission
        .check_publish_key(request)
        .map_err(Answer::refused)?;
    let media_type = request
        .header("content-type")
        .and_then(|value| value.split(';').next())
        .map(|media| media.trim().to_ascii_lowercase())
        .unwrap_or_default();
    let target = match request.path().strip_prefix(TOPIC_PREFIX) {
        None => {
            if media_type != "application/json" {
                return refuse(Refusal::new(
                    415,
                    "a batch is JSON: send Content-Type: application/json",
                ));
            }
            Target::Batch
        }
        Some(topic) => {
            check_topic(topic, config.max_topic_len).map_err(Answer::refused)?;
            let text = media_type.starts_with("text/")
                || media_type == "application/json"
                || (media_type.starts_with("application/") && media_type.ends_with("+json"));
            Target::Topic {
                name: topic.into(),
                text,
            }
        }
    };
    let expects_continue = match request.header("expect") {
        None => false,
        Some(value) if value.trim().eq_ignore_ascii_case("100-continue") => true,
        Some(value) => {
            return refuse(Refusal::new(
                417,
                format!("unknown expectation `{value}`: only 100-continue is met"),
            ));
        }
    };
    let length = body_length(request, config.max_message_size).map_err(Answer::refused)?;
    Ok(Box::new(PublishBody {
        target,
        length,
        body: Vec::with_capacity(length),
        keep_alive: !request.has_token("connection", "close"),
        expects_continue,
    }))
}

/// The body's length from `Content-Length`, which is required: no chunked bodies.
fn body_length(request: &Request, max: usize) -> Result<usize, Refusal> {
    let mut lengths = request.header_all("content-length");
    let chunked = request.header("transfer-encoding").is_some();
    let Some(length) = lengths.next() else {
        let problem = if chunked {
            "chunked bodies are not taken: send Content-Length"
        } else {
            "Content-Length is required"
        };
        return Err(Refusal::new(411, problem));
    };
    if chunked {
        return Err(Refusal::new(
            400,
            "both Transfer-Encoding and Content-Length: send Content-Length only",
        ));
    }
    let parse = |text: &str| {
        let text = text.trim();
        (!text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()))
            .then(|| text.parse::<usize>().ok())
            .flatten()
    };
    let Some(length) = parse(length) else {
        return Err(Refusal::new(
            400,
            format!("malformed Content-Length `{length}`"),
        ));
    };
    if lengths.any(|other| parse(other) != Some(length)) {
        return Err(Refusal::new(400, "Content-Length headers that disagree"));
    }
    if length > max {
        return Err(Refusal::new(
            413,
            format!(
                "a body of {length} bytes: the most this server takes is {max} (--max-message-size)"
            ),
        ));
    }
    Ok(length)
}

/// A topic named in a path or a batch: not empty, not too long.
fn check_topic(topic: &str, max_len: usize) -> Result<(), Refusal> {
    if topic.is_empty() {
        return Err(Refusal::new(400, "no topic: use /publish/<topic>"));
    }
    if topic.len() > max_len {
        return Err(Refusal::new(
            400,
            format!("topic name longer than {max_len} bytes"),
        ));
    }
    Ok(())
}

impl PublishBody {
    /// Takes body bytes from `data`; returns how many were the body's (the rest are the
    /// next request's).
    pub fn feed(&mut self, data: &[u8]) -> usize {
        let take = data.len().min(self.length - self.body.len());
        self.body.extend_from_slice(&data[..take]);
        take
    }

    pub fn is_complete(&self) -> bool {
        self.body.len() == self.length
    }

    /// Memory the body holds, for the shard's budget of incomplete messages.
    pub fn held_bytes(&self) -> usize {
        self.body.capacity()
    }

    /// The client asked to hear `100 Continue` before it sends the body.
    pub fn expects_continue(&self) -> bool {
        self.expects_continue
    }

    /// Publishes the complete body; the answer says how many subscribers each message
    /// reached (this server's, counted when it was published).
    pub fn publish(self, topics: &mut ShardTopics, max_topic_len: usize) -> Answer {
        let keep_alive = self.keep_alive;
        let outcome = match self.target {
            Target::Topic { name, text } => {
                let message = match text {
                    true => match std::str::from_utf8(&self.body) {
                        Ok(text) => Message::Text(text),
                        Err(_) => {
                            return Answer::refused(Refusal::new(
                                400,
                                "the body is not UTF-8, as a text Content-Type says it is",
                            ));
                        }
                    },
                    false => Message::Binary(&self.body),
                };
                let result = publish_one(topics, &name, message);
                let refused = result.get("error").is_some();
                let counted = usize::from(!refused);
                topics.counters().api_published(counted);
                (result, refused)
            }
            Target::Batch => match parse_batch(&self.body, max_topic_len) {
                Err(refusal) => return Answer::refused(refusal),
                Ok(batch) => {
                    let results: Vec<_> = batch
                        .iter()
                        .map(|(topic, message)| publish_one(topics, topic, message.as_message()))
                        .collect();
                    let refused = results.iter().filter(|r| r.get("error").is_some()).count();
                    topics.counters().api_published(results.len() - refused);
                    (json!({ "results": results }), refused > 0)
                }
            },
        };
        match outcome {
            (body, false) => Answer::json(200, body, keep_alive),
            // Some shard is behind: the backend should slow down.
            (body, true) => {
                let mut answer = Answer::json(503, body, keep_alive);
                answer.headers.push(("Retry-After", "1".into()));
                answer
            }
        }
    }
}

/// Publishes one message; its result as JSON.
fn publish_one(topics: &mut ShardTopics, topic: &str, message: Message<'_>) -> serde_json::Value {
    let subscribers = topics.subscribers(topic);
    match topics.publish(topic, message, None) {
        Ok(_) => json!({ "topic": topic, "subscribers": subscribers }),
        Err(err) => json!({ "topic": topic, "error": err.to_string() }),
    }
}

/// One message of a batch: `topic` or `topics`, and `text`, `binary` (base64) or `json`
/// (sent as text).
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchItem {
    topic: Option<String>,
    topics: Option<Vec<String>>,
    text: Option<String>,
    binary: Option<String>,
    json: Option<serde_json::Value>,
}

/// A batch message's payload, decoded.
#[derive(Clone, Debug)]
enum Payload {
    Text(String),
    Binary(Vec<u8>),
}

impl Payload {
    fn as_message(&self) -> Message<'_> {
        match self {
            Self::Text(text) => Message::Text(text),
            Self::Binary(bytes) => Message::Binary(bytes),
        }
    }
}

/// Reads and checks a whole batch before anything is published: a bad message refuses the
/// batch, naming the message.
fn parse_batch(body: &[u8], max_topic_len: usize) -> Result<Vec<(String, Payload)>, Refusal> {
    let items: Vec<BatchItem> = serde_json::from_slice(body).map_err(|err| {
        Refusal::new(
            400,
            format!(
                "a batch is a JSON list of {{\"topic\", \"text\" | \"binary\" | \"json\"}}: {err}"
            ),
        )
    })?;
    let mut batch = Vec::new();
    for (index, item) in items.into_iter().enumerate() {
        let bad = |problem: String| Refusal::new(400, format!("message {index}: {problem}"));
        let topics = match (item.topic, item.topics) {
            (Some(topic), None) => vec![topic],
            (None, Some(topics)) if !topics.is_empty() => topics,
            (None, Some(_)) => return Err(bad("`topics` is empty".into())),
            _ => return Err(bad("give `topic` or `topics`, one of them".into())),
        };
        for topic in &topics {
            check_topic(topic, max_topic_len).map_err(|r| bad(r.message.into_owned()))?;
        }
        let payload = match (item.text, item.binary, item.json) {
            (Some(text), None, None) => Payload::Text(text),
            (None, Some(binary), None) => Payload::Binary(
                BASE64
                    .decode(binary)
                    .map_err(|err| bad(format!("`binary` is not base64: {err}")))?,
            ),
            (None, None, Some(value)) => Payload::Text(value.to_string()),
            _ => return Err(bad("give `text`, `binary` or `json`, one of them".into())),
        };
        if batch.len() + topics.len() > MAX_BATCH {
            return Err(Refusal::new(
                413,
                format!("a batch may publish at most {MAX_BATCH} messages"),
            ));
        }
        for topic in topics {
            batch.push((topic, payload.clone()));
        }
    }
    Ok(batch)
}

#[cfg(test)]
mod tests {

    use super::*;

    #[test]
    fn bodies_need_one_length_within_the_bound() {
        let length = |head: &str| body_length(&Request::from_head(head), 100).map_err(|r| r.status);
        assert_eq!(
            length("POST /publish/a HTTP/1.1\r\nContent-Length: 5"),
            Ok(5)
        );
        assert_eq!(length("POST /publish/a HTTP/1.1"), Err(411));
        assert_eq!(
            length("POST /publish/a HTTP/1.1\r\nTransfer-Encoding: chunked"),
            Err(411)
        );
        let both = "POST /publish/a HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 5";
        assert_eq!(length(both), Err(400));
        assert_eq!(
            length("POST /publish/a HTTP/1.1\r\nContent-Length: +5"),
            Err(400)
        );
        let twice = "POST /publish/a HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6";
        assert_eq!(length(twice), Err(400));
        let same = "POST /publish/a HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 5";
        assert_eq!(length(same), Ok(5));
        assert_eq!(
            length("POST /publish/a HTTP/1.1\r\nContent-Length: 101"),
            Err(413)
        );
    }

    #[test]
    fn batches_are_checked_whole_and_name_the_bad_message() {
        let parse = |body: &str| parse_batch(body.as_bytes(), 8);
        let batch = parse(r#"[{"topic":"a","text":"x"},{"topics":["b","c"],"binary":"AAE="},{"topic":"d","json":[1]}]"#)
            .expect("a good batch");
        let topics: Vec<&str> = batch.iter().map(|(t, _)| t.as_str()).collect();
        assert_eq!(topics, ["a", "b", "c", "d"]);
        assert!(matches!(&batch[1].1, Payload::Binary(b) if b == &[0, 1]));
        assert!(matches!(&batch[3].1, Payload::Text(t) if t == "[1]"));
        let problem = |body: &str| parse(body).expect_err("refused").message.into_owned();
        assert!(problem(r#"{"topic":"a"}"#).contains("JSON list"));
        assert!(problem(r#"[{"topic":"a","text":"x","binary":"AA=="}]"#).starts_with("message 0"));
        assert!(problem(r#"[{"topic":"a","text":"x"},{"text":"x"}]"#).starts_with("message 1"));
        assert!(problem(r#"[{"topics":[],"text":"x"}]"#).contains("empty"));
        assert!(problem(r#"[{"topic":"ninechars","text":"x"}]"#).contains("longer"));
        assert!(problem(r#"[{"topic":"a","binary":"***"}]"#).contains("base64"));
        assert!(problem(r#"[{"topic":"a","text":"x","extra":1}]"#).contains("unknown field"));
        let many = format!(
            "[{}]",
            vec![r#"{"topic":"a","text":""}"#; MAX_BATCH + 1].join(",")
        );
        assert_eq!(parse(&many).expect_err("refused").status, 413);
    }

    #[test]
    fn api_paths_are_plain_requests_only() {
        assert!(is_api_request(&Request::from_head(
            "POST /publish/a HTTP/1.1"
        )));
        assert!(is_api_request(&Request::from_head(
            "POST /publish?x=1 HTTP/1.1"
        )));
        assert!(!is_api_request(&Request::from_head(
            "POST /publisher HTTP/1.1"
        )));
        let upgrade = "GET /publish/a HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade";
        assert!(
            !is_api_request(&Request::from_head(upgrade)),
            "a WebSocket there still echoes"
        );
    }
}
