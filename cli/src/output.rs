//! Tables for people, JSON for scripts.

use serde::Serialize;

use crate::args::Output;

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

pub fn table(headers: &[&str], cells: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in cells {
        for (i, c) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(c.chars().count());
            }
        }
    }
    let mut s = String::new();
    let line = |s: &mut String, row: &[String]| {
        let parts: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        s.push_str(parts.join("  ").trim_end());
        s.push('\n');
    };
    line(
        &mut s,
        &headers.iter().map(|h| h.to_string()).collect::<Vec<_>>(),
    );
    for row in cells {
        line(&mut s, row);
    }
    s
}

pub fn rfc3339(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.to_string())
}

#[cfg(test)]
mod tests {
    #[test]
    fn table_aligns_columns() {
        let t = super::table(&["A", "LONGER"], &[vec!["xyz".into(), "1".into()]]);
        assert_eq!(t, "A    LONGER\nxyz  1\n");
    }
}
