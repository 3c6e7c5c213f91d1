use std::path::Path;

use clap::{Args, FromArgMatches};
use ringws::server::admission::{JwtKey, PublishMode, Secret};
use ringws::server::config::ServerConfig;

use super::file::SettingsError;
use super::*;

/// Parses `serve` flags as the command line would, then lays them over `--config`.
fn settings(flags: &[&str]) -> Result<ServeArgs, SettingsError> {
    let command = ServeArgs::augment_args(clap::Command::new("serve"));
    let matches = command
        .try_get_matches_from(std::iter::once("serve").chain(flags.iter().copied()))
        .map_err(|err| SettingsError(err.to_string()))?;
    let args = ServeArgs::from_arg_matches(&matches).expect("parsed");
    resolve(args, &matches)
}

fn file(text: &str) -> tempfile_path::TempFile {
    tempfile_path::TempFile::new(text)
}

/// A file in the temporary directory, removed on drop.
mod tempfile_path {
    pub struct TempFile(pub std::path::PathBuf);

    impl TempFile {
        pub fn new(text: &str) -> Self {
            use std::sync::atomic::{AtomicUsize, Ordering};
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let name = format!(
                "ringws-settings-{}-{}.toml",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            );
            let path = std::env::temp_dir().join(name);
            std::fs::write(&path, text).expect("write a settings file");
            Self(path)
        }

        pub fn path(&self) -> &str {
            self.0.to_str().expect("a UTF-8 path")
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

/// The command line and the library agree on every default.
#[test]
fn flags_default_to_the_library_defaults() {
    assert_eq!(ServeArgs::default().into_config(), ServerConfig::default());
    let config = settings(&[]).expect("no flags").into_config();
    assert_eq!(config, ServerConfig::default());
}

/// Every flag is a file key of the same name, and every key a flag.
#[test]
fn file_keys_are_the_flags_long_names() {
    let file = Some(PathBuf::from("f.pem"));
    let args = ServeArgs {
        shards: Some(1),
        jwt_secret: Some("s".into()),
        jwt_secret_file: Some("f".into()),
        jwt_public_key: Some("k".into()),
        jwt_cookie: Some("c".into()),
        jwt_audience: Some("a".into()),
        jwt_issuer: Some("i".into()),
        publish_key: Some("p".into()),
        publish_key_file: Some("f".into()),
        cluster_credentials: file.clone(),
        cluster_tls_ca: file.clone(),
        cluster_tls_cert: file.clone(),
        cluster_tls_key: file,
        tls_cert: Some("cert.pem".into()),
        tls_key: Some("key.pem".into()),
        ..ServeArgs::default()
    };
    let keys: std::collections::BTreeSet<String> = toml::Table::try_from(&args)
        .expect("serializes")
        .keys()
        .cloned()
        .collect();
    let flags: std::collections::BTreeSet<String> =
        ServeArgs::augment_args(clap::Command::new("serve"))
            .get_arguments()
            .filter_map(|arg| arg.get_long().map(str::to_owned))
            .filter(|long| long != "config")
            .collect();
    assert_eq!(keys, flags);
}

#[test]
fn the_sample_file_in_contrib_is_valid_and_says_the_defaults() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/ringws.toml");
    let config = check_file(&path).expect("contrib/ringws.toml");
    let defaults = ServerConfig::default();
    assert_eq!(config.listen, ["0.0.0.0:9001".parse().expect("an address")]);
    assert_eq!(
        (config.max_queued_bytes, config.idle_timeout, config.deflate),
        (
            defaults.max_queued_bytes,
            defaults.idle_timeout,
            defaults.deflate
        )
    );
}

#[test]
fn cluster_flags_make_a_cluster_and_bad_ones_are_named() {
    let config = settings(&[
        "--cluster",
        "nats://127.0.0.1:4222",
        "--cluster",
        "nats://127.0.0.1:4223",
        "--cluster-unsubscribe-delay",
        "500ms",
    ])
    .expect("read")
    .into_config();
    let cluster = config.cluster.clone().expect("a cluster");
    assert_eq!(cluster.urls.len(), 2);
    assert_eq!(cluster.prefix, "ringws");
    assert_eq!(
        cluster.unsubscribe_delay,
        std::time::Duration::from_millis(500)
    );
    assert!(config.validate().is_ok());
    let mixed = settings(&["--cluster", "nats://a:4222", "--cluster", "redis://b:6379"])
        .expect("read")
        .into_config();
    let err = mixed.validate().expect_err("refused");
    assert!(err.to_string().starts_with("cluster: "), "{err}");
    let bad_prefix = file("cluster = [\"redis://127.0.0.1\"]\ncluster-prefix = \"a b\"\n");
    let err = check_file(&bad_prefix.0).expect_err("refused");
    assert!(err.0.contains("cluster"), "{err}");
}

#[test]
fn a_bad_flag_value_names_its_flag() {
    let err = settings(&["--idle-timeout", "5 fortnights"])
        .err()
        .expect("refused");
    assert!(err.0.contains("--idle-timeout"), "{err}");
}

#[test]
fn the_file_sets_and_flags_given_override_it() {
    let toml = file(
        "idle-timeout = \"90s\"\nmax-queued = \"8MiB\"\nlisten = [\"127.0.0.1:7000\", \"127.0.0.1:7001\"]\n\
         deflate = \"shared\"\nmax-connections = 5000\n",
    );
    let config = settings(&[
        "--config",
        toml.path(),
        "--max-queued",
        "1MiB",
        "--allowed-origin",
        "https://app.example",
    ])
    .expect("read")
    .into_config();
    assert_eq!(config.idle_timeout, std::time::Duration::from_secs(90));
    assert_eq!(config.max_queued_bytes, 1 << 20, "the flag wins");
    assert_eq!(config.max_connections, 5000);
    assert_eq!(config.listen.len(), 2);
    assert!(config.deflate.is_some());
    assert_eq!(config.allowed_origins, ["https://app.example"]);
    // What neither sets keeps its default.
    let defaults = ServerConfig::default();
    assert_eq!(config.handshake_timeout, defaults.handshake_timeout);
}

#[test]
fn admission_settings_read_from_flags_and_file() {
    let secret = file("  s3cret\n");
    let toml = file(&format!(
        "trusted-proxy = [\"10.0.0.0/8\"]\nmax-connections-per-ip = 5\n\
         handshake-rate-per-ip = 2\njwt-secret-file = \"{}\"\njwt-cookie = \"session\"\n\
         publish = \"token\"\n",
        secret.path()
    ));
    let config = settings(&["--config", toml.path(), "--publish-key", "k"])
        .expect("read")
        .into_config();
    let admission = &config.admission;
    assert_eq!(
        admission.trusted_proxies,
        ["10.0.0.0/8".parse().expect("a block")]
    );
    assert_eq!(admission.max_connections_per_ip, 5);
    assert_eq!(admission.handshake_rate_per_ip, 2.0);
    assert_eq!(admission.publish, PublishMode::Token);
    assert_eq!(admission.publish_key, Some(Secret::Value("k".into())));
    let jwt = admission.jwt.as_ref().expect("tokens on");
    assert_eq!(jwt.cookie.as_deref(), Some("session"));
    assert_eq!(jwt.key, JwtKey::Secret(Secret::File(secret.0.clone())));
    assert_eq!(config.validate(), Ok(()));
    let both = settings(&["--jwt-secret", "a", "--jwt-public-key", "/k.pem"]);
    assert!(both.err().expect("refused").0.contains("one token key"));
    let bad = file("trusted-proxy = [\"10.0.0.0/99\"]\n");
    let err = settings(&["--config", bad.path()]).err().expect("refused");
    assert!(err.0.contains("10.0.0.0/99"), "{err}");
}

#[test]
fn unknown_keys_and_bad_values_are_refused_by_name() {
    let unknown = file("idel-timeout = \"30s\"\n");
    let err = settings(&["--config", unknown.path()])
        .err()
        .expect("refused");
    assert!(err.0.contains("idel-timeout"), "{err}");
    let bad = file("max-queued = \"lots\"\n");
    let err = settings(&["--config", bad.path()]).err().expect("refused");
    assert!(
        err.0.contains("max-queued") && err.0.contains("lots"),
        "{err}"
    );
    let invalid = file("max-queued = 0\n");
    let err = check_file(&invalid.0).expect_err("refused");
    assert!(
        err.0.contains("max-queued: must be greater than zero"),
        "{err}"
    );
    let good = file("shards = 2\nbackpressure = \"close\"\n");
    assert!(check_file(&good.0).is_ok());
}
