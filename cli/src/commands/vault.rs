//! `docker dso init` and `docker dso secret …`: the local vault from the command line.
//!
//! Only `secret get` ever writes a value, and only to stdout. Values are read from
//! `--from-file`, a no-echo prompt, or stdin, with exact bytes unless `--trim`.

use std::fs::File;
use std::io::{self, IsTerminal as _, Write as _};
use std::os::fd::AsFd as _;
use std::path::Path;
use std::time::SystemTime;

use anyhow::Context as _;
use controlplane::config;
use controlplane::secret::{SecretValue, read_secret};
use controlplane::vault::{
    Contents, DEFAULT_HISTORY, KeyMode, MAX_VALUE_LEN, NewKey, Vault, VaultError, VaultFiles,
    parse_path,
};
use serde_json::json;
use tracing::info;

use crate::args::{InitArgs, SecretCommand};
use crate::keys;
use crate::output::Output;

/// `init`.
pub fn init(out: Output, args: &InitArgs) -> anyhow::Result<()> {
    let files = VaultFiles::locate()?;
    let new_key = choose_key(args.passphrase, true)?;
    create_vault(out, files, new_key, args.force)
}

/// The key of a new vault: a passphrase (from `DSO_PASSPHRASE`, or asked on the terminal when
/// `may_prompt`), else `DSO_MASTER_KEY`, else a random key file.
pub fn choose_key(passphrase: bool, may_prompt: bool) -> anyhow::Result<NewKey> {
    Ok(if passphrase {
        NewKey::Passphrase(keys::new_passphrase(may_prompt)?)
    } else if let Some(key) = keys::env_master_key()? {
        NewKey::Given(key)
    } else {
        NewKey::Random
    })
}

/// Creates the vault in `files` and reports it (shared with `setup`).
pub fn create_vault(
    out: Output,
    files: VaultFiles,
    new_key: NewKey,
    force: bool,
) -> anyhow::Result<()> {
    let (vault, wrote_key) = Vault::create(files, new_key, force).context("creating the vault")?;

    let files = vault.files();
    let mode = match vault.key_mode() {
        KeyMode::KeyFile => "key-file",
        KeyMode::Passphrase => "passphrase",
    };
    let key_note = match (vault.key_mode(), wrote_key) {
        (KeyMode::Passphrase, _) => "key: derived from your passphrase (Argon2id)".to_owned(),
        (KeyMode::KeyFile, true) => format!(
            "key:   {} (back it up: without it the vault cannot be opened)",
            files.key.display()
        ),
        (KeyMode::KeyFile, false) => format!("key: from {}", controlplane::vault::MASTER_KEY_ENV),
    };
    out.result(
        &json!({
            "vault": files.vault.display().to_string(),
            "key_file": wrote_key.then(|| files.key.display().to_string()),
            "key_mode": mode,
        }),
        &format!("created vault: {}\n{key_note}", files.vault.display()),
    )?;
    Ok(())
}

/// Opens the vault of the current dso home with the key from the environment or its files.
pub fn open_vault() -> anyhow::Result<(Vault, Contents)> {
    let files = VaultFiles::locate()?;
    let env_key = keys::env_master_key()?;
    let opened = Vault::open(files, env_key, &mut keys::passphrase).context("opening the vault")?;
    Ok(opened)
}

/// `secret …`.
pub fn secret(out: Output, config: Option<&Path>, command: &SecretCommand) -> anyhow::Result<()> {
    match command {
        SecretCommand::Set {
            path,
            from_file,
            trim,
        } => {
            // Check the path before asking for a value the user would then type for nothing.
            let path = parse_path(path)?;
            let value = read_value(&path.to_string(), from_file.as_deref())?;
            let value = if *trim { value.trimmed() } else { value };
            let keep = history_setting(config)?;
            let (vault, _) = open_vault()?;
            let version = vault
                .update(|contents| Ok(contents.set(path.clone(), value, SystemTime::now(), keep)))
                .with_context(|| format!("storing {path}"))?;
            info!(secret.ref = %path, version, "secret version stored");
            out.result(
                &json!({ "path": path.as_str(), "version": version }),
                &format!("stored {path} version {version}"),
            )?;
        }

        SecretCommand::Get { path, version } => {
            let path = parse_path(path)?;
            let (_, contents) = open_vault()?;
            let record =
                match version {
                    Some(number) => contents.version(&path, *number).ok_or_else(|| {
                        VaultError::VersionNotFound {
                            path: path.clone(),
                            version: *number,
                        }
                    })?,
                    None => contents
                        .latest(&path)
                        .ok_or_else(|| VaultError::SecretNotFound { path: path.clone() })?,
                };
            let mut stdout = io::stdout().lock();
            stdout.write_all(record.value.expose())?;
            stdout.flush()?;
        }

        SecretCommand::List => {
            let (_, contents) = open_vault()?;
            let rows: Vec<(String, u64, String, usize)> = contents
                .iter()
                .filter_map(|(path, versions)| {
                    let newest = versions.last()?;
                    Some((
                        path.to_string(),
                        newest.number,
                        timestamp(newest.created),
                        versions.len(),
                    ))
                })
                .collect();
            let json =
                json!(rows
                .iter()
                .map(|(path, version, updated, kept)| json!({
                    "path": path, "version": version, "updated": updated, "versions_kept": kept,
                }))
                .collect::<Vec<_>>());
            out.data(&json, |w| {
                if rows.is_empty() {
                    return writeln!(w, "no secrets (add one with `docker dso secret set PATH`)");
                }
                let width = rows.iter().map(|r| r.0.len()).max().unwrap_or(4).max(4);
                writeln!(w, "{:<width$}  {:>7}  UPDATED", "PATH", "VERSION")?;
                for (path, version, updated, _) in &rows {
                    writeln!(w, "{path:<width$}  {version:>7}  {updated}")?;
                }
                Ok(())
            })?;
        }

        SecretCommand::Delete { path } => {
            let path = parse_path(path)?;
            let (vault, _) = open_vault()?;
            let versions = vault
                .update(|contents| {
                    let count = contents.history(&path).map_or(0, <[_]>::len);
                    if contents.delete(&path) {
                        Ok(count)
                    } else {
                        Err(VaultError::SecretNotFound { path: path.clone() })
                    }
                })
                .with_context(|| format!("deleting {path}"))?;
            info!(secret.ref = %path, versions, "secret deleted");
            out.result(
                &json!({ "path": path.as_str(), "deleted_versions": versions }),
                &format!(
                    "deleted {path} ({})",
                    super::compose::counted(versions, "version", "versions")
                ),
            )?;
        }

        SecretCommand::History { path } => {
            let path = parse_path(path)?;
            let (_, contents) = open_vault()?;
            let versions = contents
                .history(&path)
                .ok_or_else(|| VaultError::SecretNotFound { path: path.clone() })?;
            let json = json!({
                "path": path.as_str(),
                "versions": versions
                    .iter()
                    .map(|v| json!({ "version": v.number, "created": timestamp(v.created) }))
                    .collect::<Vec<_>>(),
            });
            out.data(&json, |w| {
                writeln!(w, "{:>7}  CREATED", "VERSION")?;
                for v in versions.iter().rev() {
                    writeln!(w, "{:>7}  {}", v.number, timestamp(v.created))?;
                }
                Ok(())
            })?;
        }
    }
    Ok(())
}

/// The value for `secret set`: `--from-file`, else a prompt on a terminal, else stdin.
fn read_value(path: &str, from_file: Option<&Path>) -> anyhow::Result<SecretValue> {
    if let Some(file) = from_file {
        let reader =
            File::open(file).with_context(|| format!("opening --from-file {}", file.display()))?;
        return read_secret(reader, MAX_VALUE_LEN)
            .with_context(|| format!("reading --from-file {}", file.display()));
    }

    // `< /dev/null`, and a closed stdin (`<&-`, which the Rust runtime reopens on /dev/null),
    // would store an empty value where the user surely meant to give one. An empty value is
    // still possible on purpose: `printf '' | …` or `--from-file /dev/null`.
    if stdin_is_dev_null() {
        anyhow::bail!(
            "stdin is /dev/null or closed; pipe the value in, type it on a terminal, or use \
             --from-file FILE"
        );
    }
    if io::stdin().is_terminal() {
        return keys::prompt(&format!("Value for {path}: "))
            .context("reading the value from the terminal");
    }
    read_secret(io::stdin().lock(), MAX_VALUE_LEN).context("reading the value from stdin")
}

/// True when stdin is the `/dev/null` device.
fn stdin_is_dev_null() -> bool {
    use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _};

    let Ok(stdin) = io::stdin().as_fd().try_clone_to_owned() else {
        return false;
    };
    let (Ok(stdin), Ok(null)) = (File::from(stdin).metadata(), std::fs::metadata("/dev/null"))
    else {
        return false;
    };
    stdin.file_type().is_char_device() && stdin.rdev() == null.rdev()
}

/// Versions to keep: `history` of the local provider in the configuration, if there is one.
fn history_setting(explicit: Option<&Path>) -> anyhow::Result<usize> {
    let Some(path) = config::find(explicit)? else {
        return Ok(DEFAULT_HISTORY);
    };
    let config =
        config::load(&path).context("loading the configuration (for the history setting)")?;
    Ok(config.local_history().unwrap_or(DEFAULT_HISTORY))
}

fn timestamp(time: SystemTime) -> String {
    humantime::format_rfc3339_seconds(time).to_string()
}
