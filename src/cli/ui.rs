//! How the CLI talks: data to stdout (a closed pipe is not an error), messages and progress to
//! stderr at the chosen verbosity, progress bars only on terminals.
use std::cell::RefCell;
use std::fmt::Display;
use std::io::{IsTerminal, Write};

use indicatif::{ProgressBar, ProgressStyle};
use tttnn::{Error, Result};

/// How much goes to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Verbosity {
    /// Errors only.
    Quiet,
    /// Messages and progress.
    Normal,
    /// Also a line per step (per neighbour in `run`).
    Verbose,
}

/// Where a subcommand's output goes.
pub struct Printer {
    verbosity: Verbosity,
    /// The bar on screen, if any: messages go above it.
    bar: RefCell<Option<ProgressBar>>,
}

impl Printer {
    /// A printer at `verbosity`.
    pub fn new(verbosity: Verbosity) -> Self {
        Self {
            verbosity,
            bar: RefCell::new(None),
        }
    }

    /// Whether messages are printed.
    pub fn is_quiet(&self) -> bool {
        self.verbosity == Verbosity::Quiet
    }

    /// A line of data on stdout.
    pub fn out(&self, line: impl Display) -> Result<()> {
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "{line}")
            .and_then(|()| stdout.flush())
            .map_err(|e| Error::io("<stdout>", e))
    }

    /// A message on stderr (above the progress bar), unless quiet.
    pub fn say(&self, message: impl Display) {
        if self.verbosity >= Verbosity::Normal {
            self.print(message);
        }
    }

    /// A detail line on stderr, only when verbose.
    pub fn detail(&self, message: impl Display) {
        if self.verbosity >= Verbosity::Verbose {
            self.print(message);
        }
    }

    /// A warning on stderr, whatever the verbosity.
    pub fn warn(&self, message: impl Display) {
        self.print(format!("warning: {message}"));
    }

    fn print(&self, message: impl Display) {
        match self.bar.borrow().as_ref() {
            Some(b) => b.println(message.to_string()),
            None => eprintln!("{message}"),
        }
    }

    /// A progress bar of `len` steps in indicatif's `template`, when stderr is a terminal and the
    /// printer is not quiet; `None` otherwise (print progress lines instead).
    pub fn bar(&self, len: u64, template: &str) -> Option<ProgressBar> {
        if self.is_quiet() || !std::io::stderr().is_terminal() {
            return None;
        }
        let b = ProgressBar::new(len);
        b.set_style(ProgressStyle::with_template(template).expect("valid template"));
        *self.bar.borrow_mut() = Some(b.clone());
        Some(b)
    }

    /// Clears the bar from the screen.
    pub fn finish_bar(&self) {
        if let Some(b) = self.bar.borrow_mut().take() {
            b.finish_and_clear();
        }
    }
}
