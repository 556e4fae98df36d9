//! What a pull shows while it runs: a bar per layer on a terminal, one plain line per finished
//! layer otherwise (CI logs and editors' captures keep every line).

use std::io::{IsTerminal, Read};
use std::time::Duration;

use indicatif::{HumanBytes, MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::digest::Digest;

/// How a pull reports progress on stderr.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ProgressMode {
    /// Nothing: for library callers and tests.
    #[default]
    Quiet,
    /// Bars when stderr is a terminal, plain lines otherwise.
    Auto,
}

/// The progress of one pull.
#[derive(Clone)]
pub(crate) struct Progress {
    kind: Kind,
}

#[derive(Clone)]
enum Kind {
    Quiet,
    Lines,
    Bars(MultiProgress),
}

impl Progress {
    pub(crate) fn new(mode: ProgressMode) -> Progress {
        let kind = match mode {
            ProgressMode::Quiet => Kind::Quiet,
            ProgressMode::Auto if std::io::stderr().is_terminal() => {
                Kind::Bars(MultiProgress::with_draw_target(ProgressDrawTarget::stderr()))
            }
            ProgressMode::Auto => Kind::Lines,
        };
        Progress { kind }
    }

    /// A line about the whole pull.
    pub(crate) fn say(&self, message: &str) {
        match &self.kind {
            Kind::Quiet => {}
            Kind::Lines => eprintln!("{message}"),
            Kind::Bars(bars) => {
                let _ = bars.println(message);
            }
        }
    }

    /// Starts reporting one layer of `size` bytes (compressed).
    pub(crate) fn layer(&self, digest: &Digest, size: Option<u64>) -> LayerProgress {
        let bar = match &self.kind {
            Kind::Bars(bars) => {
                let bar = bars.add(ProgressBar::new(size.unwrap_or(0)));
                let template = "{prefix} {bar:30} {bytes}/{total_bytes} {bytes_per_sec} {msg}";
                if let Ok(style) = ProgressStyle::with_template(template) {
                    bar.set_style(style);
                }
                bar.set_prefix(format!("layer {}", digest.short()));
                bar.enable_steady_tick(Duration::from_millis(200));
                Some(bar)
            }
            _ => None,
        };
        LayerProgress { bar, lines: matches!(self.kind, Kind::Lines), digest: digest.clone(), size }
    }
}

/// The progress of one layer; its reader wrapper counts bytes as they are read.
#[derive(Clone)]
pub(crate) struct LayerProgress {
    bar: Option<ProgressBar>,
    lines: bool,
    digest: Digest,
    size: Option<u64>,
}

impl LayerProgress {
    pub(crate) fn inc(&self, n: u64) {
        if let Some(bar) = &self.bar {
            bar.inc(n);
        }
    }

    /// Starts over after a retry.
    pub(crate) fn reset(&self) {
        if let Some(bar) = &self.bar {
            bar.set_position(0);
        }
    }

    /// Ends the layer's bar or prints its line.
    pub(crate) fn finish(&self, what: &str) {
        if let Some(bar) = &self.bar {
            bar.finish_with_message(what.to_owned());
        } else if self.lines {
            match self.size {
                Some(size) => eprintln!("layer {} ({}): {what}", self.digest.short(), HumanBytes(size)),
                None => eprintln!("layer {}: {what}", self.digest.short()),
            }
        }
    }

    /// Counts the bytes read through `reader`.
    pub(crate) fn reader<R: Read>(&self, reader: R) -> CountingReader<R> {
        CountingReader { inner: reader, progress: self.clone() }
    }
}

pub(crate) struct CountingReader<R> {
    inner: R,
    progress: LayerProgress,
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.progress.inc(n as u64);
        Ok(n)
    }
}
