//! From the settings to the library's [`ServerConfig`].

use super::{Backpressure, Deflate, Publish, ServeArgs, SlowSubscriber, TlsKernel};
use ringws::proto::deflate::DeflateConfig;
use ringws::runtime::Keepalive;
use ringws::server::admission::{JwtConfig, JwtKey, PublishMode, Secret};
use ringws::server::cluster::ClusterConfig;
use ringws::server::config::{
    BackpressurePolicy, ServerConfig, SlowSubscriberPolicy, TlsFiles, TlsKernelMode,
};

impl ServeArgs {
    pub fn into_config(self) -> ServerConfig {
        let mut config = ServerConfig::default();
        if !self.listen.is_empty() || !self.tls_listen.is_empty() {
            config.listen = self.listen;
        }
        config.tls_listen = self.tls_listen;
        config.tls = match (self.tls_cert, self.tls_key) {
            (None, None) => None,
            // One without the other: an empty path, which the server refuses by name.
            (cert, key) => Some(TlsFiles {
                cert: cert.unwrap_or_default(),
                key: key.unwrap_or_default(),
            }),
        };
        config.tls_kernel = match self.tls_kernel {
            TlsKernel::Auto => TlsKernelMode::Auto,
            TlsKernel::Off => TlsKernelMode::Off,
            TlsKernel::Always => TlsKernelMode::Always,
        };
        if let Some(shards) = self.shards {
            config.shards = shards;
        }
        config.max_connections = self.max_connections;
        config.max_message_size = self.max_message_size.0;
        config.max_header_bytes = self.max_header_bytes.0;
        config.handshake_timeout = self.handshake_timeout.0;
        config.idle_timeout = self.idle_timeout.0;
        config.close_timeout = self.close_timeout.0;
        config.allowed_origins = self.allowed_origins;
        config.subprotocols = self.subprotocols;
        config.max_queued_bytes = self.max_queued.0;
        config.backpressure = match self.backpressure {
            Backpressure::Pause => BackpressurePolicy::PauseReading,
            Backpressure::Close => BackpressurePolicy::Close,
        };
        config.slow_subscriber = match self.slow_subscriber {
            SlowSubscriber::DropOldest => SlowSubscriberPolicy::DropOldest,
            SlowSubscriber::Close => SlowSubscriberPolicy::Close,
        };
        config.max_delivery_lag = self.max_delivery_lag.0;
        config.max_incomplete_bytes = self.max_incomplete.0;
        config.max_topic_len = self.max_topic_len;
        config.max_topics_per_connection = self.max_topics_per_connection;
        config.max_shard_backlog = self.max_shard_backlog.0;
        config.shutdown_grace = self.shutdown_grace.0;
        config.drain_delay = self.drain_delay.0;
        config.drain_spread = self.drain_spread.0;
        config.metrics = !self.no_metrics;
        config.status_page = !self.no_status_page;
        let runtime = &mut config.runtime;
        runtime.tcp_user_timeout = self.tcp_user_timeout.0;
        runtime.keepalive = (!self.keepalive.0.is_zero()).then(|| Keepalive {
            idle: self.keepalive.0,
            ..Keepalive::default()
        });
        runtime.linger = self.linger.0;
        runtime.send_buffer = self.send_buffer.0;
        runtime.backlog = self.backlog;
        runtime.ring_entries = self.ring_entries;
        runtime.recv_buffers = self.recv_buffers;
        runtime.recv_buffer_size = self.recv_buffer_size.0;
        config.log_connections = self.log_connections;
        let admission = &mut config.admission;
        admission.proxy_protocol_listen = self.listen_proxy;
        admission.trusted_proxies = self.trusted_proxies;
        admission.max_connections_per_ip = self.max_connections_per_ip;
        admission.handshake_rate_per_ip = self.handshake_rate_per_ip;
        admission.handshake_burst_per_ip = self.handshake_burst_per_ip;
        // `check_choices` made sure at most one key is given.
        let jwt_key = match (self.jwt_secret, self.jwt_secret_file, self.jwt_public_key) {
            (Some(secret), _, _) => Some(JwtKey::Secret(Secret::Value(secret))),
            (_, Some(file), _) => Some(JwtKey::Secret(Secret::File(file))),
            (_, _, Some(file)) => Some(JwtKey::PublicKey(file)),
            _ => None,
        };
        admission.jwt = jwt_key.map(|key| {
            let mut jwt = JwtConfig::new(key);
            jwt.cookie = self.jwt_cookie;
            jwt.audience = self.jwt_audience;
            jwt.issuer = self.jwt_issuer;
            jwt.leeway = self.jwt_leeway.0;
            jwt
        });
        admission.publish = match self.publish {
            Publish::Anyone => PublishMode::Anyone,
            Publish::Nobody => PublishMode::Nobody,
            Publish::Token => PublishMode::Token,
        };
        admission.publish_key = match (self.publish_key, self.publish_key_file) {
            (Some(key), _) => Some(Secret::Value(key)),
            (_, Some(file)) => Some(Secret::File(file)),
            _ => None,
        };
        config.cluster = (!self.cluster.is_empty()).then(|| {
            let mut cluster = ClusterConfig::new(self.cluster);
            cluster.prefix = self.cluster_prefix;
            cluster.buffer = self.cluster_buffer.0;
            cluster.unsubscribe_delay = self.cluster_unsubscribe_delay.0;
            cluster.credentials = self.cluster_credentials;
            cluster.tls_ca = self.cluster_tls_ca;
            cluster.tls_cert = self.cluster_tls_cert;
            cluster.tls_key = self.cluster_tls_key;
            cluster.ready_needs_link = self.cluster_ready_needs_link;
            cluster
        });
        config.deflate = match self.deflate {
            Deflate::Off => None,
            mode => Some(DeflateConfig {
                no_context_takeover: matches!(mode, Deflate::Shared),
                peer_no_context_takeover: matches!(mode, Deflate::Shared),
                min_size: self.deflate_min_size.0,
                ..DeflateConfig::default()
            }),
        };
        config
    }
}
