//! `docker dso setup --mode local`: a starter `dso.yaml` plus `init`, in one step.
//!
//! The configuration goes to `--config PATH` when given, else `$DSO_HOME/dso.yaml` (default
//! `~/.dso/dso.yaml`), one of the places the lookup searches. An existing file is replaced
//! only with `--force` or after a yes on the terminal; an existing vault is kept as it is.

use std::io::{self, BufRead as _, IsTerminal as _, Write as _};
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use controlplane::config::{self, STARTER_LOCAL};
use controlplane::vault::{VaultFiles, store};
use serde_json::json;

use super::CommandError;
use super::vault::{choose_key, create_vault};
use crate::args::{SetupArgs, SetupMode};
use crate::output::Output;

/// `setup`.
pub fn run(out: Output, explicit: Option<&Path>, args: &SetupArgs) -> anyhow::Result<()> {
    match args.mode {
        SetupMode::Local => {}
    }
    let files = VaultFiles::locate()?;
    let target: PathBuf =
        explicit.map_or_else(|| files.dir.join(config::FILE_NAME), Path::to_path_buf);
    let interactive = !args.non_interactive && io::stdin().is_terminal();

    // 1. The key of a vault still to be made, before anything is written: a missing passphrase
    //    must not leave a configuration behind without its vault. --non-interactive never
    //    prompts, not even on /dev/tty.
    let new_key = if files.vault_exists() {
        None
    } else {
        Some(choose_key(args.passphrase, !args.non_interactive)?)
    };

    // 2. The configuration: never replaced silently.
    if target.exists() && !args.force {
        let confirmed =
            interactive && confirm(&format!("{} exists. Replace it? [y/N] ", target.display()))?;
        if !confirmed {
            return Err(CommandError::ConfigExists { path: target }.into());
        }
    }
    write_config(&target, &files.dir)?;
    out.note(&format!("wrote configuration: {}", target.display()))?;

    // 3. The vault: created when missing, kept when present (its secrets matter more).
    let vault_created = if let Some(new_key) = new_key {
        // With --json, setup prints one document of its own below.
        let vault_out = Output {
            json: false,
            quiet: out.quiet || out.json,
        };
        create_vault(vault_out, files.clone(), new_key, false)?;
        true
    } else {
        out.note(&format!("kept existing vault: {}", files.vault.display()))?;
        false
    };

    if out.json {
        out.data(
            &json!({
                "config": target.display().to_string(),
                "vault": files.vault.display().to_string(),
                "vault_created": vault_created,
            }),
            |_| Ok(()),
        )?;
    }
    out.note("next: docker dso secret set myapp/db_password")?;
    Ok(())
}

fn confirm(question: &str) -> anyhow::Result<bool> {
    let mut stderr = io::stderr().lock();
    write!(stderr, "{question}")?;
    stderr.flush()?;
    let mut answer = String::new();
    io::stdin()
        .lock()
        .read_line(&mut answer)
        .context("reading the answer")?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes" | "Yes"))
}

/// Writes the starter file (mode 0600: a configuration may later hold credentials).
fn write_config(target: &Path, home: &Path) -> anyhow::Result<()> {
    let dir = match target.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if dir == home {
        store::create_private_dir(&dir)?;
    }
    let mut temp = tempfile::NamedTempFile::new_in(&dir)
        .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
    temp.write_all(STARTER_LOCAL.as_bytes())
        .and_then(|()| temp.as_file().sync_all())
        .with_context(|| format!("writing {}", target.display()))?;
    temp.persist(target)
        .map_err(|err| err.error)
        .with_context(|| format!("renaming the new configuration to {}", target.display()))?;
    Ok(())
}
