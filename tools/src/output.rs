//! Standard output (buffered and locked, so that 100k lines are fast), the error type of
//! every command, and the aligned tables of the `describe` commands.

use std::io::{self, BufWriter, StdoutLock, Write};

use fjord_client::ClientError;

/// Why a command failed.
#[derive(Debug)]
pub enum Failure {
    Client(ClientError),
    /// Anything else, as the one line to print.
    Message(String),
    /// Standard output was closed (`fjord consume | head`): not an error, exit 0.
    StdoutClosed,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Client(e) => write!(f, "{e}"),
            Failure::Message(m) => f.write_str(m),
            Failure::StdoutClosed => f.write_str("standard output closed"),
        }
    }
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Self {
        Failure::Client(e)
    }
}

fn io_failure(e: io::Error) -> Failure {
    if e.kind() == io::ErrorKind::BrokenPipe {
        Failure::StdoutClosed
    } else {
        Failure::Message(format!("cannot write to standard output: {e}"))
    }
}

/// Buffered, locked standard output.
pub struct Out {
    w: BufWriter<StdoutLock<'static>>,
}

impl Out {
    pub fn new() -> Out {
        Out {
            w: BufWriter::with_capacity(64 * 1024, io::stdout().lock()),
        }
    }

    /// Writes raw bytes.
    pub fn bytes(&mut self, b: &[u8]) -> Result<(), Failure> {
        self.w.write_all(b).map_err(io_failure)
    }

    /// Writes `line` and a newline.
    pub fn line(&mut self, line: &str) -> Result<(), Failure> {
        self.bytes(line.as_bytes())?;
        self.bytes(b"\n")
    }

    pub fn flush(&mut self) -> Result<(), Failure> {
        self.w.flush().map_err(io_failure)
    }
}

/// The lines of an aligned table: every cell padded to its column's widest, two spaces
/// between columns, each line indented by two spaces (no trailing blanks). The first row
/// is the header; every row has the same number of cells.
pub fn table<R: AsRef<[String]>>(rows: &[R]) -> Vec<String> {
    let mut widths: Vec<usize> = Vec::new();
    for row in rows {
        let row = row.as_ref();
        assert!(
            widths.is_empty() || widths.len() == row.len(),
            "ragged table"
        );
        widths.resize(row.len(), 0);
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    rows.iter()
        .map(|row| {
            let cells: Vec<String> = row
                .as_ref()
                .iter()
                .zip(&widths)
                .map(|(cell, &w)| format!("{cell:<w$}"))
                .collect();
            format!("  {}", cells.join("  ").trim_end())
        })
        .collect()
}
