//! Before the WebSocket, and instead of it: answering a request head (an upgrade, a page,
//! a refusal), the publish API's bodies and answers, and keeping an API connection alive
//! between requests.

use crate::proto::handshake::{self, Refusal, RequestParser};

use super::super::app::App;
use super::super::config::ServerConfig;
use super::super::events;
use super::super::publish_api;
use super::{Connection, Cx, Stage, Timer, upgrade};

/// Where a complete request head left the connection.
pub(super) enum Answered {
    /// A WebSocket: frames may follow in the same read.
    Open,
    /// A request body follows.
    Body,
    /// Answered; nothing more is read.
    Done,
}

/// A parser for the next request head.
pub(super) fn request_parser(config: &ServerConfig) -> Box<RequestParser> {
    let limits = handshake::Limits {
        max_head_bytes: config.max_header_bytes,
        ..Default::default()
    };
    Box::new(RequestParser::new(limits))
}

impl<S> Connection<S> {
    /// Answers the complete request the parser holds; `head_only` says no byte followed it
    /// in this read.
    pub(super) fn answer<A: App<State = S>>(
        &mut self,
        cx: &mut Cx<'_>,
        app: &mut A,
        head_only: bool,
    ) -> Answered {
        let Stage::Handshake(parser) = std::mem::replace(&mut self.stage, Stage::Responded) else {
            return Answered::Done;
        };
        let Some(request) = parser.request() else {
            cx.io.abort(cx.id);
            return Answered::Done;
        };
        // With the API off, only a POST there is answered (naming the setting): other
        // requests get what they always got.
        let api_on = cx.shard.admission.publish_api_on();
        if publish_api::is_api_request(request) && (api_on || request.method() == "POST") {
            return match publish_api::start(request, &cx.shard.admission, &cx.shard.config) {
                Ok(body) => {
                    if body.expects_continue() && head_only {
                        cx.io.send(cx.id, publish_api::CONTINUE.into());
                    }
                    let deadline = cx.now.after(cx.shard.config.handshake_timeout);
                    self.timers.set(Timer::Handshake, deadline);
                    self.stage = Stage::Body(body);
                    self.account_incomplete(cx);
                    Answered::Body
                }
                Err(answer) => {
                    self.respond_to_api(cx, &answer);
                    Answered::Done
                }
            };
        }
        // Behind trusted proxies, the client is who `X-Forwarded-For` says.
        self.peer = cx
            .shard
            .admission
            .client_addr(self.peer.addr(), request)
            .into();
        match upgrade::answer(request, self.peer.addr(), app, cx.shard, cx.now) {
            upgrade::Answer::Page(response) => {
                self.respond_and_close(cx, response);
                Answered::Done
            }
            upgrade::Answer::Refuse(refusal) => {
                self.refuse(cx, &refusal);
                Answered::Done
            }
            upgrade::Answer::Accept { response, open } => {
                self.admitted = true;
                cx.shard.counters().websocket_opened();
                cx.shard.counters().families.handshakes.count(101);
                let loud = cx.shard.config.log_connections;
                events::opened(loud, cx.shard.index(), self.peer.addr(), request.path());
                cx.io.send(cx.id, response.into());
                self.stage = Stage::Open(open);
                let idle = cx.shard.config.idle_timeout;
                if !idle.is_zero() {
                    self.timers.set(Timer::Idle, cx.now.after(idle));
                }
                self.callback(cx, app, |ws, app| app.on_open(ws));
                Answered::Open
            }
        }
    }

    /// Publishes the complete body of a publish API request and answers it. Returns whether
    /// the connection stays open for another request.
    pub(super) fn publish(&mut self, cx: &mut Cx<'_>) -> bool {
        let Stage::Body(body) = std::mem::replace(&mut self.stage, Stage::Responded) else {
            return false;
        };
        self.timers.stop(Timer::Handshake);
        let answer = body.publish(&mut cx.shard.topics, cx.shard.config.max_topic_len);
        self.account_incomplete(cx);
        self.respond_to_api(cx, &answer);
        answer.keep_alive
    }

    /// Sends a publish API answer; keeps the connection for the next request if the answer
    /// says so (closing it once an idle timeout passes with none), else closes it.
    pub(super) fn respond_to_api(&mut self, cx: &mut Cx<'_>, answer: &publish_api::Answer) {
        cx.shard
            .counters()
            .families
            .publish_api
            .count(answer.status);
        let mut response = Vec::new();
        answer.write(&mut response);
        if !answer.keep_alive {
            return self.respond_and_close(cx, response);
        }
        cx.io.send(cx.id, response.into());
        self.stage = Stage::Waiting { kept_alive: true };
        let config = &cx.shard.config;
        let idle = match config.idle_timeout.is_zero() {
            true => config.handshake_timeout,
            false => config.idle_timeout,
        };
        self.timers.set(Timer::Handshake, cx.now.after(idle));
        // A backend that sends requests and never reads the answers stops being read.
        self.after_sending(cx);
    }

    pub(super) fn refuse(&mut self, cx: &mut Cx<'_>, refusal: &Refusal) {
        cx.shard
            .counters()
            .families
            .handshakes
            .count(refusal.status);
        let loud = cx.shard.config.log_connections;
        events::refused(
            loud,
            cx.shard.index(),
            self.peer.addr(),
            refusal.status,
            &refusal.message,
        );
        let mut response = Vec::new();
        refusal.write(&mut response);
        self.respond_and_close(cx, response);
    }

    pub(super) fn respond_and_close(&mut self, cx: &mut Cx<'_>, response: Vec<u8>) {
        self.stage = Stage::Responded;
        cx.io.send(cx.id, response.into());
        self.finish(cx);
    }
}
