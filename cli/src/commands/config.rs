//! `docker dso config validate` and `docker dso config show`.
//!
//! `validate` prints every problem as `FILE:LINE:COLUMN: key: message` (or as JSON) and exits
//! 1 when there is any. `show` prints the effective configuration with defaults applied and
//! credentials replaced by `<redacted>`.

use std::path::Path;

use anyhow::Context as _;
use controlplane::config::{self, ConfigError};
use serde_json::json;

use super::CommandError;
use crate::args::ConfigCommand;
use crate::output::Output;

/// `config …`.
pub fn run(out: Output, explicit: Option<&Path>, command: &ConfigCommand) -> anyhow::Result<()> {
    let path = config::find_required(explicit)?;
    match command {
        ConfigCommand::Validate => {
            let problems = match config::load(&path) {
                Ok(_) => Vec::new(),
                Err(ConfigError::Invalid { problems, .. }) => problems,
                Err(other) => return Err(other.into()),
            };
            let file = path.display().to_string();
            out.data(
                &json!({ "file": file, "valid": problems.is_empty(), "problems": problems }),
                |w| {
                    if problems.is_empty() {
                        return writeln!(w, "{file}: valid");
                    }
                    for problem in &problems {
                        writeln!(w, "{file}:{problem}")?;
                    }
                    Ok(())
                },
            )?;
            if !problems.is_empty() {
                return Err(CommandError::ConfigInvalid {
                    path,
                    count: problems.len(),
                }
                .into());
            }
        }
        ConfigCommand::Show => {
            let config = config::load(&path)?;
            let view = config.redacted_view();
            out.data(&view, |w| {
                let yaml = yaml_serde::to_string(&view).map_err(std::io::Error::other)?;
                writeln!(w, "# effective configuration from {}", path.display())?;
                w.write_all(yaml.as_bytes())
            })
            .context("printing the configuration")?;
        }
    }
    Ok(())
}
