//! Errors in `lifeboat.toml`, written for the person who has to fix the file: where the problem
//! is (file:line:column), which key, what is wrong, and what to write instead.

use std::fmt;

/// A position in the manifest text, 1-based like editors show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    pub line: usize,
    pub column: usize,
}

impl Location {
    /// The line and column of byte `offset` in `text`.
    pub fn of(text: &str, offset: usize) -> Location {
        let offset = offset.min(text.len());
        let before = &text[..offset];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
        let column = before[line_start..].chars().count() + 1;
        Location { line, column }
    }
}

/// One thing wrong with the manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The manifest file as the user knows it.
    pub file: String,
    /// Where in the file, when the problem is at a spot (not for a missing section).
    pub location: Option<Location>,
    /// The dotted key, e.g. `processes.web.replicas`.
    pub key: String,
    /// What is wrong.
    pub problem: String,
    /// What to write instead.
    pub fix: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.location {
            Some(at) => write!(f, "{}:{}:{}: ", self.file, at.line, at.column)?,
            None => write!(f, "{}: ", self.file)?,
        }
        write!(f, "{}: {}\n  fix: {}", self.key, self.problem, self.fix)
    }
}

/// The manifest can not be used; nothing was started. Holds every problem found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ManifestError {
    pub problems: Vec<Problem>,
}

impl ManifestError {
    pub(crate) fn new(problems: Vec<Problem>) -> ManifestError {
        ManifestError { problems }
    }

    /// A problem found outside of parsing (e.g. by the daemon: the listen port is in use),
    /// reported in the same form as parse errors.
    pub fn at(
        file: &str,
        location: Option<Location>,
        key: &str,
        problem: impl Into<String>,
        fix: impl Into<String>,
    ) -> ManifestError {
        ManifestError::new(vec![Problem {
            file: file.to_string(),
            location,
            key: key.to_string(),
            problem: problem.into(),
            fix: fix.into(),
        }])
    }
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

/// Turns a TOML syntax or type error into a [`Problem`] that names the key and the fix.
pub(crate) fn describe_toml_error(file: &str, text: &str, err: &toml::de::Error) -> Problem {
    let span = err.span();
    let location = span.clone().map(|s| Location::of(text, s.start));
    let key = span.map(|s| key_at(text, s.start)).unwrap_or_default();
    let message = err.message().trim().to_string();
    let (problem, fix) = explain(&key, &message);
    Problem {
        file: file.to_string(),
        location,
        key,
        problem,
        fix,
    }
}

fn explain(key: &str, message: &str) -> (String, String) {
    let short = key.rsplit('.').next().unwrap_or(key);
    if let Some(rest) = message.strip_prefix("unknown field `") {
        let (field, expected) = rest.split_once('`').unwrap_or((rest, ""));
        let allowed: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
        let mut fix = format!("remove `{field}`");
        if let Some(near) = allowed.iter().find(|a| similar(a, field)) {
            fix = format!("did you mean `{near}`? otherwise {fix}");
        }
        if !allowed.is_empty() {
            fix.push_str(&format!(
                "; the keys allowed here are {}",
                quoted_list(&allowed)
            ));
        }
        return (format!("unknown key `{field}`"), fix);
    }
    if let Some(rest) = message.strip_prefix("invalid type: ") {
        let (found, expected) = rest
            .split_once(", expected ")
            .unwrap_or((rest, "another type"));
        let example = match expected {
            e if e.contains("i64") || e.contains("integer") || e.contains("u32") => {
                format!("a whole number without quotes, e.g. {short} = 3")
            }
            e if e.contains("string") => format!("a quoted string, e.g. {short} = \"...\""),
            e if e.contains("sequence") => format!("a list, e.g. {short} = [\"...\"]"),
            e if e.contains("struct") || e.contains("map") => {
                format!("a table, e.g. [{key}] on its own line followed by its keys")
            }
            e => e.to_string(),
        };
        let expected = match expected {
            e if e.contains("i64") || e.contains("integer") || e.contains("u32") => {
                "a whole number"
            }
            e if e.contains("sequence") => "a list",
            e if e.contains("struct") || e.contains("map") => "a table",
            e => e,
        };
        return (
            format!("expected {expected}, found {found}"),
            format!("write {example}"),
        );
    }
    (
        message.to_string(),
        "fix the TOML syntax at this spot (see https://toml.io for the format)".to_string(),
    )
}

fn quoted_list(items: &[&str]) -> String {
    items
        .iter()
        .map(|i| format!("`{i}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Two keys that differ by a typo: same up to one edit, or one is a prefix of the other.
fn similar(a: &str, b: &str) -> bool {
    if a.starts_with(b) || b.starts_with(a) {
        return true;
    }
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut row = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != cb);
            row.push((prev[j] + cost).min(prev[j + 1] + 1).min(row[j] + 1));
        }
        prev = row;
    }
    prev[b.len()] <= 2
}

/// The dotted key written at `offset`: the nearest `[table]` header above it plus the key on
/// its own line (`name = ...`), following inline tables (`health = { path = ... }`).
fn key_at(text: &str, offset: usize) -> String {
    let offset = offset.min(text.len());
    let line_start = text[..offset].rfind('\n').map(|i| i + 1).unwrap_or(0);
    let line_end = text[offset..]
        .find('\n')
        .map(|i| offset + i)
        .unwrap_or(text.len());
    let line = &text[line_start..line_end];
    let upto = &text[line_start..offset];
    let mut parts: Vec<String> = Vec::new();
    for header in text[..line_start].lines().rev() {
        let h = header.trim();
        if h.starts_with('[') {
            let name = h.trim_start_matches('[').split(']').next().unwrap_or("");
            parts.push(name.trim().to_string());
            break;
        }
    }
    let trimmed = line.trim_start();
    if trimmed.starts_with('[') {
        // The error is on a header itself: the key is the header's table.
        let name = trimmed
            .trim_start_matches('[')
            .split(']')
            .next()
            .unwrap_or("");
        return name.trim().to_string();
    }
    // Keys on this line before the offset: `a = { b = ...` gives a.b; if the offset is on a key
    // (not after its '='), that key is the last part.
    let mut keys: Vec<String> = Vec::new();
    let mut token = String::new();
    for c in upto.chars() {
        match c {
            '=' => {
                keys.push(token.trim().trim_matches('"').to_string());
                token.clear();
            }
            '{' | ',' => token.clear(),
            '}' => {
                keys.pop();
                token.clear();
            }
            _ => token.push(c),
        }
    }
    let rest = &line[upto.len()..];
    if token.trim().is_empty() && !rest.trim_start().starts_with('=') {
        // The offset is on a key: take the word there.
        let word: String = rest
            .trim_start()
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == '-')
            .collect();
        if !word.is_empty() && rest.contains('=') && !keys_done(&keys, rest) {
            keys.push(word);
        }
    }
    parts.extend(keys.into_iter().filter(|k| !k.is_empty()));
    parts.join(".")
}

/// True when the text after the offset is a value, not a `key =` pair.
fn keys_done(keys: &[String], rest: &str) -> bool {
    let before_eq = rest.split('=').next().unwrap_or("");
    !keys.is_empty() && (before_eq.contains('"') || before_eq.contains('['))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_are_one_based_lines_and_columns() {
        let text = "a = 1\nbb = 2\n";
        assert_eq!(Location::of(text, 0), Location { line: 1, column: 1 });
        assert_eq!(Location::of(text, 11), Location { line: 2, column: 6 });
    }

    #[test]
    fn the_key_at_an_offset_includes_its_table_and_inline_tables() {
        let text = "[processes.web]\nreplicas = \"3\"\nhealth = { path = 5 }\n";
        let at = |needle: &str| text.find(needle).unwrap();
        assert_eq!(key_at(text, at("\"3\"")), "processes.web.replicas");
        assert_eq!(key_at(text, at("5 }")), "processes.web.health.path");
        assert_eq!(key_at(text, at("replicas")), "processes.web.replicas");
    }
}
