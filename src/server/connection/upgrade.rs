//! The answer to a complete HTTP request: a page for plain GETs, a refusal, or the 101 and
//! a fresh session. Each decision is a step of its own: route, origin, admission (room on
//! the server, the address's bounds, the token), subprotocol, the application's say,
//! permessage-deflate.

use std::net::SocketAddr;
use std::time::Duration;

use crate::proto::Role;
use crate::proto::deflate::{self, Compressor, DeflateParams};
use crate::proto::handshake::{self, Refusal, Request};
use crate::proto::session::{Session, SessionConfig};

use super::super::admission::{self, Turned};
use super::super::app::{Accept, App, Upgrade};
use super::super::shard_state::ShardState;
use super::{Open, Parts, Time};

pub(super) enum Answer<S> {
    /// A plain HTTP GET, answered with a page.
    Page(Vec<u8>),
    Refuse(Refusal),
    /// The 101 response, and the connection it opens.
    Accept {
        response: Vec<u8>,
        open: Open<S>,
    },
}

pub(super) fn answer<A: App>(
    request: &Request,
    peer: SocketAddr,
    app: &mut A,
    shard: &ShardState,
    now: Time,
) -> Answer<A::State> {
    let key = match handshake::validate(request) {
        Ok(upgrade) => upgrade.key,
        Err(refusal) if refusal.is_plain_http() && request.method() == "GET" => {
            return Answer::Page(page(request, app, shard));
        }
        Err(refusal) => return Answer::Refuse(refusal),
    };
    let config = &shard.config;
    if !config.origin_allowed(request.origin()) {
        return Answer::Refuse(Refusal::new(403, "origin not allowed"));
    }
    // Counted before the token is checked: a flood of bad tokens is rate-limited too. The
    // ticket gives its place back unless the connection opens.
    let counters = shard.counters();
    let ticket = match shard.admission.admit(peer.ip(), now) {
        Ok(ticket) => ticket,
        Err(turned) => {
            match turned {
                Turned::Full { .. } => counters.server_full(),
                Turned::Limited(admission::Limited::Rate { .. }) => counters.rate_limited(),
                Turned::Limited(admission::Limited::Connections { .. }) => counters.ip_capped(),
            }
            return Answer::Refuse(turned.refusal());
        }
    };
    let grants = match shard.admission.authenticate(request) {
        Ok(grants) => grants,
        Err(refusal) => {
            counters.token_refused();
            return Answer::Refuse(refusal);
        }
    };
    let offered = handshake::select_protocol(request.protocols(), &config.subprotocols);
    let decision = app.upgrade(&Upgrade {
        request,
        peer,
        protocol: offered,
        grants: grants.as_ref(),
    });
    let Accept { state, protocol } = match decision {
        Ok(accept) => accept,
        Err(refusal) => {
            if admission::is_insufficient_scope(&refusal) {
                counters.topic_refused();
            }
            return Answer::Refuse(refusal);
        }
    };
    let protocol = match protocol {
        Some(chosen) if request.protocols().any(|offer| offer == chosen) => Some(chosen.into()),
        Some(_) => {
            return Answer::Refuse(Refusal::new(
                500,
                "the application chose a subprotocol the client did not offer",
            ));
        }
        None => offered.map(Into::into),
    };
    let agreement = negotiate_deflate(request, shard);
    ticket.keep();

    let mut response = Vec::with_capacity(256);
    handshake::write_accept(
        &mut response,
        key,
        protocol.as_deref(),
        agreement.as_ref().map(|a| a.response.as_str()),
    );
    let deflate = agreement.map(|a| a.params);
    let session = Session::new(
        Role::Server,
        SessionConfig {
            max_message_size: config.max_message_size,
            deflate,
        },
    );
    let Session { reader, writer } = session;
    let open = Open {
        reader,
        parts: Parts::new(
            writer,
            state,
            protocol,
            deflate.and_then(|params| own_compressor(params, shard)),
        ),
    };
    Answer::Accept { response, open }
}

/// The live status page at `/`: it reads `/metrics` itself.
const STATUS_PAGE: &str = include_str!("../status.html");

/// A shard that has not gone round its loop for this long is not alive.
const STALL_LIMIT: Duration = Duration::from_secs(2);

/// The body of a plain GET: health, readiness, the metrics, the status page, or the
/// application's page.
fn page<A: App>(request: &Request, app: &A, shard: &ShardState) -> Vec<u8> {
    let mut response = Vec::new();
    let config = &shard.config;
    let text = "text/plain; charset=utf-8";
    if request.path() == "/healthz" {
        let stalled = shard.health.stalled(STALL_LIMIT);
        let (status, body) = match stalled.as_slice() {
            [] => (
                200,
                format!("ok: {} shards turning\n", shard.health.shards()),
            ),
            stalled => (
                503,
                format!("shards {stalled:?} have not turned for {STALL_LIMIT:?}\n"),
            ),
        };
        handshake::write_response(&mut response, status, text, &body);
    } else if request.path() == "/readyz" {
        let (mut status, mut body) = match shard.lifecycle.draining() {
            false => (200, String::from("ready\n")),
            true => (503, String::from("draining: the server is shutting down\n")),
        };
        if let Some(cluster) = shard.topics.hub().cluster() {
            let (line, unready) = cluster.readiness();
            if unready && status == 200 {
                (status, body) = (503, String::new());
            }
            body.push_str(&line);
        }
        handshake::write_response(&mut response, status, text, &body);
    } else if config.metrics && request.path() == "/metrics" {
        let hub = shard.topics.hub();
        let topics = hub.directory.len() as u64;
        let mut metrics = shard.topics.registry().snapshot(topics).render();
        if let Some(cluster) = hub.cluster() {
            cluster.render_metrics(&mut metrics);
        }
        let kind = "text/plain; version=0.0.4; charset=utf-8";
        handshake::write_response(&mut response, 200, kind, &metrics);
    } else if config.metrics && config.status_page && request.path() == "/" {
        let kind = "text/html; charset=utf-8";
        handshake::write_response(&mut response, 200, kind, STATUS_PAGE);
    } else {
        let kind = "text/plain; charset=utf-8";
        handshake::write_response(&mut response, 200, kind, app.http_page());
    }
    response
}

/// The server's answer to the client's permessage-deflate offers: the first it can accept.
fn negotiate_deflate(request: &Request, shard: &ShardState) -> Option<deflate::Agreement> {
    let config = shard.config.deflate.as_ref()?;
    request
        .extension_offers()
        .into_iter()
        .filter(|offer| offer.name.eq_ignore_ascii_case(deflate::EXTENSION_NAME))
        .find_map(|offer| {
            let params = offer
                .params
                .iter()
                .map(|(name, value)| (name.as_str(), value.as_deref()));
            deflate::accept_offer(config, params).ok()
        })
}

/// A connection keeps its own compressor only when the server keeps context between
/// messages; otherwise the shard's shared ones serve it.
fn own_compressor(params: DeflateParams, shard: &ShardState) -> Option<Box<Compressor>> {
    let config = shard.config.deflate.as_ref()?;
    let direction = params.server();
    if direction.no_context_takeover {
        return None;
    }
    Compressor::new(direction, config).map(Box::new)
}
