//! Where command output goes: data to stdout (text or `--json`), confirmations to stdout
//! unless `--quiet`. Logs and errors never come through here; they go to stderr.

use std::io::{self, Write};

/// Output settings of one run.
#[derive(Clone, Copy, Debug)]
pub struct Output {
    /// `--json`: data as one JSON document.
    pub json: bool,
    /// `--quiet`: no confirmations.
    pub quiet: bool,
}

impl Output {
    /// A confirmation such as "stored myapp/db version 3"; skipped with `--quiet` or `--json`.
    pub fn note(&self, text: &str) -> io::Result<()> {
        if self.quiet || self.json {
            return Ok(());
        }
        let mut out = io::stdout().lock();
        writeln!(out, "{text}")?;
        out.flush()
    }

    /// Data: `json` with `--json`, otherwise what `text` writes.
    pub fn data(
        &self,
        json: &serde_json::Value,
        text: impl FnOnce(&mut dyn Write) -> io::Result<()>,
    ) -> io::Result<()> {
        let mut out = io::stdout().lock();
        if self.json {
            serde_json::to_writer_pretty(&mut out, json)?;
            writeln!(out)?;
        } else {
            text(&mut out)?;
        }
        out.flush()
    }

    /// A JSON result for `--json` runs of commands that otherwise only confirm.
    pub fn result(&self, json: &serde_json::Value, text: &str) -> io::Result<()> {
        if self.json {
            self.data(json, |_| Ok(()))
        } else {
            self.note(text)
        }
    }
}
