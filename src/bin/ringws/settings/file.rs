//! The `--config` file: read, laid under the command line, checked.

use std::path::Path;

use clap::parser::ValueSource;
use clap::{ArgMatches, Args};

use ringws::server::config::ServerConfig;

use super::ServeArgs;

impl ServeArgs {
    /// Settings that exclude each other: one token key, one publish key.
    fn check_choices(&self) -> Result<(), SettingsError> {
        let keys = [
            ("jwt-secret", self.jwt_secret.is_some()),
            ("jwt-secret-file", self.jwt_secret_file.is_some()),
            ("jwt-public-key", self.jwt_public_key.is_some()),
        ];
        let given: Vec<&str> = keys
            .iter()
            .filter(|(_, set)| *set)
            .map(|(k, _)| *k)
            .collect();
        if given.len() > 1 {
            return Err(SettingsError(format!(
                "{}: give one token key, not several",
                given.join(", ")
            )));
        }
        if self.publish_key.is_some() && self.publish_key_file.is_some() {
            return Err(SettingsError(
                "publish-key, publish-key-file: give one, not both".into(),
            ));
        }
        Ok(())
    }
}

/// Why the settings could not be read.
#[derive(Debug)]
pub struct SettingsError(pub String);

impl std::fmt::Display for SettingsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The settings from `args` (parsed from `matches`) laid over the file `args.config`
/// names, if any: a flag given on the command line wins over the file's key.
pub fn resolve(args: ServeArgs, matches: &ArgMatches) -> Result<ServeArgs, SettingsError> {
    let Some(path) = args.config.clone() else {
        args.check_choices()?;
        return Ok(args);
    };
    let mut table = read_table(&path)?;
    let mut flags = toml::Table::try_from(&args)
        .map_err(|err| SettingsError(format!("the command line: {err}")))?;
    // A file key is its flag's long name; the command line and the environment win.
    for arg in ServeArgs::augment_args(clap::Command::new("serve")).get_arguments() {
        let given = matches!(
            matches.value_source(arg.get_id().as_str()),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        );
        if let (true, Some(key)) = (given, arg.get_long())
            && let Some(value) = flags.remove(key)
        {
            table.insert(key.to_owned(), value);
        }
    }
    let mut settings = from_table(table, &path)?;
    settings.config = Some(path);
    settings.check_choices()?;
    Ok(settings)
}

/// Reads and checks a settings file on its own, as `ringws check-config` does.
pub fn check_file(path: &Path) -> Result<ServerConfig, SettingsError> {
    let settings = from_table(read_table(path)?, path)?;
    settings
        .check_choices()
        .map_err(|err| SettingsError(format!("{}: {err}", path.display())))?;
    let config = settings.into_config();
    config
        .validate()
        .map_err(|err| SettingsError(format!("{}: {err}", path.display())))?;
    Ok(config)
}

fn read_table(path: &Path) -> Result<toml::Table, SettingsError> {
    let text = std::fs::read_to_string(path)
        .map_err(|err| SettingsError(format!("{}: {err}", path.display())))?;
    text.parse::<toml::Table>()
        .map_err(|err| SettingsError(format!("{}: {err}", path.display())))
}

fn from_table(table: toml::Table, path: &Path) -> Result<ServeArgs, SettingsError> {
    // Keys the file leaves out take the flags' defaults.
    let mut full = toml::Table::try_from(ServeArgs::default())
        .map_err(|err| SettingsError(format!("the defaults: {err}")))?;
    full.extend(table);
    full.try_into()
        .map_err(|err: toml::de::Error| SettingsError(format!("{}: {err}", path.display())))
}
