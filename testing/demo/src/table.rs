//! Plain aligned text tables: a header, a rule and the rows, each column as wide as its
//! widest cell; numbers (cells that parse as integers) are right-aligned.

pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&str]) -> Table {
        Table {
            header: header.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) -> &mut Table {
        self.rows.push(cells);
        self
    }

    /// The table as text, every line indented by two spaces and ending in a newline.
    pub fn render(&self) -> String {
        let columns = self.header.len();
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (index, cell) in row.iter().enumerate().take(columns) {
                widths[index] = widths[index].max(cell.chars().count());
            }
        }
        let numeric = |index: usize| {
            !self.rows.is_empty()
                && self
                    .rows
                    .iter()
                    .all(|row| row.get(index).is_some_and(|c| c.parse::<i64>().is_ok()))
        };
        let line = |cells: &[String]| {
            let mut text = String::from(" ");
            for (index, width) in widths.iter().enumerate() {
                let cell = cells.get(index).map(String::as_str).unwrap_or("");
                if numeric(index) {
                    text.push_str(&format!(" {cell:>width$} "));
                } else {
                    text.push_str(&format!(" {cell:<width$} "));
                }
            }
            text.trim_end().to_owned() + "\n"
        };
        let mut out = line(&self.header);
        let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
        out.push_str(&line(&rule));
        for row in &self.rows {
            out.push_str(&line(row));
        }
        out
    }

    pub fn print(&self) {
        print!("{}", self.render());
    }
}

#[cfg(test)]
mod tests {
    use super::Table;

    #[test]
    fn columns_align_and_numbers_go_right() {
        let mut table = Table::new(&["batch", "points"]);
        table.row(vec!["a".into(), "5".into()]);
        table.row(vec!["longer".into(), "120".into()]);
        assert_eq!(
            table.render(),
            "  batch   points\n  ------  ------\n  a            5\n  longer     120\n"
        );
    }
}
