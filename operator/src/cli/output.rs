//! How `kubectl cellstack` prints: aligned tables with colour for people (colour only on a
//! terminal, never with `NO_COLOR`), JSON or YAML documents for scripts.

use std::io::Write as _;

use clap::ValueEnum;
use console::{Style, measure_text_width, pad_str};
use serde::Serialize;

/// Output format, `-o`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Aligned columns for people.
    Table,
    /// One JSON document (one per line while watching).
    Json,
    /// One YAML document (`---` between documents while watching).
    Yaml,
}

/// Colours of states.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tone {
    Good,
    Busy,
    Bad,
    Plain,
}

/// Paints text when colour is on.
#[derive(Debug, Clone, Copy)]
pub struct Painter {
    colour: bool,
}

impl Painter {
    /// Colour when stdout is a terminal and neither `NO_COLOR` nor `--no-color` says otherwise
    /// (`console`'s rules, plus the flag).
    pub fn for_stdout(no_colour: bool) -> Self {
        let env_says_no = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
        Self {
            colour: !no_colour && !env_says_no && console::colors_enabled(),
        }
    }

    /// Never colours (tests, files).
    pub fn plain() -> Self {
        Self { colour: false }
    }

    pub fn paint(&self, text: &str, tone: Tone) -> String {
        if !self.colour {
            return text.to_owned();
        }
        let style = match tone {
            Tone::Good => Style::new().green(),
            Tone::Busy => Style::new().yellow(),
            Tone::Bad => Style::new().red().bold(),
            Tone::Plain => return text.to_owned(),
        };
        style.force_styling(true).apply_to(text).to_string()
    }

    pub fn heading(&self, text: &str) -> String {
        if self.colour {
            Style::new()
                .bold()
                .force_styling(true)
                .apply_to(text)
                .to_string()
        } else {
            text.to_owned()
        }
    }
}

/// Rows under `headers`, each column as wide as its widest cell (colour codes not counted),
/// two spaces apart, like `kubectl get`.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(measure_text_width(cell));
            }
        }
    }
    let line = |cells: Vec<&str>| -> String {
        let last = cells.len().saturating_sub(1);
        let mut out = String::new();
        for (i, cell) in cells.into_iter().enumerate() {
            if i == last {
                out.push_str(cell);
            } else {
                out.push_str(&pad_str(cell, widths[i], console::Alignment::Left, None));
                out.push_str("  ");
            }
        }
        out.trim_end().to_owned()
    };
    let mut out = line(headers.to_vec());
    out.push('\n');
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
        out.push('\n');
    }
    out
}

/// Prints `value` as `output` says; `render` makes the table.
pub fn emit<T: Serialize>(
    output: Output,
    value: &T,
    render: impl FnOnce(&T) -> String,
) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match output {
        Output::Table => out.write_all(render(value).as_bytes())?,
        Output::Json => writeln!(out, "{}", serde_json::to_string_pretty(value)?)?,
        Output::Yaml => out.write_all(yaml(value)?.as_bytes())?,
    }
    out.flush()?;
    Ok(())
}

/// `value` as YAML of the same shape as its JSON (serde_yaml would write enums as YAML tags,
/// which a reader of the JSON does not expect).
fn yaml<T: Serialize>(value: &T) -> anyhow::Result<String> {
    Ok(serde_yaml::to_string(&serde_json::to_value(value)?)?)
}

/// Prints one document of a watch: a JSON line, or a YAML document after `---`.
pub fn emit_update<T: Serialize>(output: Output, value: &T) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match output {
        Output::Table => {}
        Output::Json => writeln!(out, "{}", serde_json::to_string(value)?)?,
        Output::Yaml => write!(out, "---\n{}", yaml(value)?)?,
    }
    out.flush()?;
    Ok(())
}

/// A percentage for a progress column.
pub fn percent(done: u64, total: u64) -> String {
    if total == 0 {
        return "-".into();
    }
    format!("{}%", done.saturating_mul(100) / total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align_on_the_widest_cell_and_colour_codes_take_no_width() {
        let painter = Painter { colour: true };
        let rows = vec![
            vec![
                "alpha".into(),
                painter.paint("Ready", Tone::Good),
                "3".into(),
            ],
            vec!["b".into(), "Degraded".into(), "12".into()],
        ];
        let text = table(&["NAME", "PHASE", "TENANTS"], &rows);
        let plain = console::strip_ansi_codes(&text);
        assert_eq!(
            plain,
            "NAME   PHASE     TENANTS\nalpha  Ready     3\nb      Degraded  12\n"
        );
        assert_ne!(text, plain, "colour was asked for");
    }

    #[test]
    fn plain_painter_never_colours() {
        assert_eq!(Painter::plain().paint("Ready", Tone::Bad), "Ready");
    }
}
