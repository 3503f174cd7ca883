//! Tables for people, JSON for scripts, JSON lines for streams.

use std::io::{self, Write};

use serde::Serialize;

use crate::args::{Format, Output};

/// Prints `rows` as JSON, or as an aligned table of `headers` and `cells`.
pub fn print<T: Serialize>(
    out: Output,
    rows: &T,
    headers: &[&str],
    cells: Vec<Vec<String>>,
) -> anyhow::Result<()> {
    match out {
        Output::Json => println!("{}", serde_json::to_string_pretty(rows)?),
        Output::Table => print!("{}", table(headers, &cells)),
    }
    Ok(())
}

/// Prints a list in any [`Format`]: jsonl writes one compact object per row. A reader
/// that goes away (`| head`) ends the output quietly.
pub fn print_rows<T: Serialize>(
    format: Format,
    rows: &[T],
    headers: &[&str],
    cells: Vec<Vec<String>>,
) -> anyhow::Result<()> {
    let mut out = io::stdout().lock();
    let mut table = StreamTable::default();
    quiet_pipe(write_rows(
        &mut out, format, rows, &mut table, headers, &cells,
    ))
}

/// Writes `rows` in `format`. Tables go through `table`, so that rows written later
/// (`--follow`) keep the columns of the first batch.
pub fn write_rows<W: Write, T: Serialize>(
    w: &mut W,
    format: Format,
    rows: &[T],
    table: &mut StreamTable,
    headers: &[&str],
    cells: &[Vec<String>],
) -> io::Result<()> {
    match format {
        Format::Table => table.write(w, headers, cells)?,
        Format::Json => {
            serde_json::to_writer_pretty(&mut *w, rows)?;
            writeln!(w)?;
        }
        Format::Jsonl => {
            for row in rows {
                serde_json::to_writer(&mut *w, row)?;
                writeln!(w)?;
            }
        }
    }
    w.flush()
}

/// A closed pipe is the reader saying "enough", not an error worth a message.
fn quiet_pipe(r: io::Result<()>) -> anyhow::Result<()> {
    match r {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}

pub fn table(headers: &[&str], cells: &[Vec<String>]) -> String {
    let mut out = Vec::new();
    // Writing to a Vec cannot fail.
    let _ = StreamTable::default().write(&mut out, headers, cells);
    String::from_utf8_lossy(&out).into_owned()
}

/// An aligned table written in batches: the header and the column widths come from the
/// first batch; a later, wider cell widens its column from then on.
#[derive(Debug, Default)]
pub struct StreamTable {
    widths: Vec<usize>,
}

impl StreamTable {
    pub fn write<W: Write>(
        &mut self,
        w: &mut W,
        headers: &[&str],
        cells: &[Vec<String>],
    ) -> io::Result<()> {
        let first = self.widths.is_empty();
        if first {
            self.widths = headers.iter().map(|h| h.chars().count()).collect();
        }
        for row in cells {
            for (i, c) in row.iter().enumerate() {
                if let Some(width) = self.widths.get_mut(i) {
                    *width = (*width).max(c.chars().count());
                }
            }
        }
        if first {
            let headers: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
            self.line(w, &headers)?;
        }
        for row in cells {
            self.line(w, row)?;
        }
        Ok(())
    }

    fn line<W: Write>(&self, w: &mut W, row: &[String]) -> io::Result<()> {
        let parts: Vec<String> = row
            .iter()
            .zip(&self.widths)
            .map(|(c, width)| format!("{c:<width$}"))
            .collect();
        writeln!(w, "{}", parts.join("  ").trim_end())
    }
}

pub fn rfc3339(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_columns() {
        let t = table(&["A", "LONGER"], &[vec!["xyz".into(), "1".into()]]);
        assert_eq!(t, "A    LONGER\nxyz  1\n");
    }

    #[test]
    fn streamed_tables_keep_their_header_and_widen_later_rows() {
        let mut t = StreamTable::default();
        let mut out = Vec::new();
        t.write(&mut out, &["A", "B"], &[vec!["x".into(), "1".into()]])
            .unwrap();
        t.write(&mut out, &["A", "B"], &[vec!["wide".into(), "2".into()]])
            .unwrap();
        t.write(&mut out, &["A", "B"], &[]).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "A  B\nx  1\nwide  2\n");
    }

    #[test]
    fn rows_print_as_json_or_one_object_per_line() {
        let rows = [serde_json::json!({"a": 1}), serde_json::json!({"a": 2})];
        let write = |format| {
            let mut out = Vec::new();
            write_rows(
                &mut out,
                format,
                &rows,
                &mut StreamTable::default(),
                &["A"],
                &[vec!["1".into()], vec!["2".into()]],
            )
            .unwrap();
            String::from_utf8(out).unwrap()
        };
        assert_eq!(write(Format::Jsonl), "{\"a\":1}\n{\"a\":2}\n");
        assert_eq!(write(Format::Table), "A\n1\n2\n");
        let json: serde_json::Value = serde_json::from_str(&write(Format::Json)).unwrap();
        assert_eq!(json, serde_json::json!([{"a": 1}, {"a": 2}]));
    }
}
