//! Standard output for people and pipes: tables whose columns line up, and writes that end the
//! process quietly when the reader went away (`odi relays | head -1`).
//!
//! SIGPIPE stays ignored (as Rust sets it up), so a peer closing a socket mid-upload is an error
//! the command reports, not a silent death; a closed standard output is handled here instead.

use std::io::Write as _;

/// Writes `text` to standard output. If the reader closed the pipe, the command has nothing
/// left to say to anyone: exit at once with status 0, as `head` expects of its writer.
pub(crate) fn emit(text: &str) {
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        exit_on_write_error(&e);
    }
}

/// `emit` with a newline.
pub(crate) fn line(text: &str) {
    emit(&format!("{text}\n"));
}

/// What a failed write to standard output means: a closed pipe ends the command quietly, any
/// other failure (a full disk behind a redirect) is reported.
pub(crate) fn exit_on_write_error(e: &std::io::Error) -> ! {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        std::process::exit(0);
    }
    eprintln!("error: cannot write to standard output: {e}");
    std::process::exit(1);
}

#[derive(Clone, Copy, PartialEq)]
pub(crate) enum Align {
    Left,
    Right,
}

/// A table printed with each column as wide as its widest cell.
pub(crate) struct Table {
    headers: Vec<(&'static str, Align)>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub(crate) fn new(headers: &[(&'static str, Align)]) -> Self {
        Self { headers: headers.to_vec(), rows: Vec::new() }
    }

    pub(crate) fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub(crate) fn render(&self) -> String {
        let mut widths: Vec<usize> = self.headers.iter().map(|(h, _)| h.chars().count()).collect();
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        let header: Vec<String> = self.headers.iter().map(|(h, _)| (*h).to_owned()).collect();
        for row in std::iter::once(&header).chain(&self.rows) {
            let last = row.len().min(self.headers.len()).saturating_sub(1);
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate().take(self.headers.len()) {
                let pad = widths[i].saturating_sub(cell.chars().count());
                if i > 0 {
                    line.push_str("  ");
                }
                match self.headers[i].1 {
                    Align::Right => {
                        line.extend(std::iter::repeat_n(' ', pad));
                        line.push_str(cell);
                    }
                    Align::Left => {
                        line.push_str(cell);
                        if i < last {
                            line.extend(std::iter::repeat_n(' ', pad));
                        }
                    }
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_line_up_whatever_the_cell_widths() {
        let mut t = Table::new(&[("NAME", Align::Left), ("SIZE", Align::Right), ("NOTE", Align::Left)]);
        t.row(vec!["a".into(), "1.0 GiB".into(), "x".into()]);
        t.row(vec!["a-much-longer-name".into(), "0 B".into(), "".into()]);
        let text = t.render();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "NAME                   SIZE  NOTE");
        assert_eq!(lines[1], "a                   1.0 GiB  x");
        assert_eq!(lines[2], "a-much-longer-name      0 B");
    }
}
