//! Reading Mosquitto configuration files: the lines of one file, split as Mosquitto splits
//! them, and the files an `include_dir` names, in Mosquitto's order.
//!
//! No interpretation happens here: what a line means is the parser's business.

use std::cmp::Ordering;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::finding::Origin;

/// One option line: the option name and the rest of the line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Line {
    /// Where it is.
    pub(super) at: Origin,
    /// The first word.
    pub(super) key: String,
    /// The rest of the line, without surrounding blanks (may be empty).
    pub(super) value: String,
}

/// The option lines of a file's contents, in order. A line that is not UTF-8 comes back
/// as its origin, for the caller to report.
///
/// Mosquitto treats a line whose first character is `#` as a comment and splits the rest
/// at blanks. This also skips comments after leading blanks (Mosquitto would reject them
/// as an unknown option `#`), and splits at tabs too.
pub(super) fn lines(file: &Arc<Path>, bytes: &[u8]) -> Vec<Result<Line, Origin>> {
    let mut out = Vec::new();
    for (index, raw) in bytes.split(|&b| b == b'\n').enumerate() {
        let at = Origin {
            file: file.clone(),
            line: index + 1,
        };
        let Ok(text) = std::str::from_utf8(raw) else {
            out.push(Err(at));
            continue;
        };
        let text = text.trim_matches(|c| c == ' ' || c == '\t' || c == '\r');
        if text.is_empty() || text.starts_with('#') {
            continue;
        }
        let (key, value) = match text.find([' ', '\t']) {
            Some(split) => (&text[..split], text[split..].trim_matches([' ', '\t'])),
            None => (text, ""),
        };
        out.push(Ok(Line {
            at,
            key: key.to_string(),
            value: value.to_string(),
        }));
    }
    out
}

/// The `*.conf` files of `dir`, in the order Mosquitto loads them: case-sensitive
/// alphabetical, upper case before the lower case of the same letter (`A.conf`,
/// `a.conf`, `B.conf`).
///
/// # Errors
/// The directory cannot be read.
pub(super) fn include_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let is_conf = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.ends_with(".conf"));
        if is_conf && path.is_file() {
            files.push(path);
        }
    }
    files.sort_by(|a, b| mosquitto_order(&file_name(a), &file_name(b)));
    Ok(files)
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn mosquitto_order(a: &str, b: &str) -> Ordering {
    a.to_ascii_lowercase()
        .cmp(&b.to_ascii_lowercase())
        .then_with(|| a.cmp(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file() -> Arc<Path> {
        Arc::from(Path::new("m.conf"))
    }

    #[test]
    fn comments_blanks_and_values() {
        let text = b"# comment\n\nlistener 1883 127.0.0.1\r\n  # indented comment\n\
            password_file /etc/mosquitto/pass word  \nallow_anonymous\n\tlog_type\tall\n";
        let got: Vec<_> = lines(&file(), text)
            .into_iter()
            .map(|l| l.expect("utf-8"))
            .map(|l| (l.at.line, l.key, l.value))
            .collect();
        assert_eq!(
            got,
            vec![
                (3, "listener".into(), "1883 127.0.0.1".into()),
                (5, "password_file".into(), "/etc/mosquitto/pass word".into()),
                (6, "allow_anonymous".into(), String::new()),
                (7, "log_type".into(), "all".into()),
            ]
        );
    }

    #[test]
    fn a_line_that_is_not_utf8_is_reported_by_line() {
        let got = lines(&file(), b"listener 1883\nuser \xff\xfe\n");
        assert!(got[0].is_ok());
        assert_eq!(got[1].as_ref().expect_err("not utf-8").line, 2);
    }

    #[test]
    fn include_order_is_mosquittos() {
        let mut names = vec!["b.conf", "A.conf", "01.conf", "a.conf", "B.conf", "00.conf"];
        names.sort_by(|a, b| mosquitto_order(a, b));
        assert_eq!(
            names,
            ["00.conf", "01.conf", "A.conf", "a.conf", "B.conf", "b.conf"]
        );
    }
}
