//! Writes JSON values as YAML that means the same to a YAML 1.1 reader (kubectl, client-go's
//! sigs.k8s.io/yaml) as to a YAML 1.2 one. Under 1.1, plain `yes`, `off`, `y`, `~`, `1_000`,
//! `190:20:30`, `0x1F` or `.5e3` are booleans, nulls or numbers; so a string is written plain
//! only when it cannot be read as anything but that string by either, and double-quoted
//! (JSON's escapes, which YAML shares) otherwise — as kubectl's own output quotes them.

use serde_json::Value;

/// One document, block style, ending in a newline.
pub fn document(value: &Value) -> String {
    let mut out = String::new();
    match value {
        Value::Object(m) if !m.is_empty() => map(&mut out, m, 0),
        Value::Array(a) if !a.is_empty() => seq(&mut out, a, 0),
        other => {
            out.push_str(&scalar(other));
            out.push('\n');
        }
    }
    out
}

/// Words a YAML 1.1 or 1.2 reader resolves to a boolean or null when plain.
const RESERVED: &[&str] = &[
    "y", "Y", "yes", "Yes", "YES", "n", "N", "no", "No", "NO", "true", "True", "TRUE", "false",
    "False", "FALSE", "on", "On", "ON", "off", "Off", "OFF", "null", "Null", "NULL", "~",
];

/// Whether `s` reads back as itself, a string, when written plain.
fn plain_is_safe(s: &str) -> bool {
    let mut chars = s.chars();
    let Some(first) = chars.next() else {
        return false;
    };
    // A letter first rules out numbers of every base and notation, and every indicator.
    first.is_ascii_alphabetic()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
        && !RESERVED.contains(&s)
    // 1.1 floats like `e5` need a digit first, infinities and NaN a dot: both excluded above.
}

fn string(s: &str) -> String {
    if plain_is_safe(s) {
        return s.to_owned();
    }
    // Double-quoted, escaping what a YAML reader would not keep as it is: the quote and the
    // backslash, every control character, and the characters YAML reads as line breaks or
    // drops (NEL, LS, PS, BOM) and the non-characters it refuses.
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control()
                || matches!(
                    c,
                    '\u{2028}' | '\u{2029}' | '\u{feff}' | '\u{fffe}' | '\u{ffff}'
                ) =>
            {
                out.push_str(&format!("\\u{:04x}", c as u32))
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => string(s),
        Value::Null => "null".into(),
        Value::Object(_) => "{}".into(),
        Value::Array(_) => "[]".into(),
        // Booleans and numbers: JSON's spelling is canonical in both YAML versions.
        other => other.to_string(),
    }
}

/// Longest key written as an implicit `key: value`, with room under YAML's 1024.
const MAX_SIMPLE_KEY: usize = 1000;

fn indent(out: &mut String, n: usize) {
    out.extend(std::iter::repeat_n(' ', n));
}

fn map(out: &mut String, m: &serde_json::Map<String, Value>, at: usize) {
    for (i, (k, v)) in m.iter().enumerate() {
        // The first key of a sequence item follows its "- ".
        if i > 0 || out.is_empty() || out.ends_with('\n') {
            indent(out, at);
        }
        let key = string(k);
        if key.len() > MAX_SIMPLE_KEY {
            // YAML limits an implicit key to 1024 characters: a longer one is written explicit.
            out.push_str("? ");
            out.push_str(&key);
            out.push('\n');
            indent(out, at);
        } else {
            out.push_str(&key);
        }
        out.push(':');
        value_after_key(out, v, at);
    }
}

fn value_after_key(out: &mut String, v: &Value, at: usize) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            out.push('\n');
            map(out, m, at + 2);
        }
        Value::Array(a) if !a.is_empty() => {
            out.push('\n');
            seq(out, a, at);
        }
        other => {
            out.push(' ');
            out.push_str(&scalar(other));
            out.push('\n');
        }
    }
}

fn seq(out: &mut String, a: &[Value], at: usize) {
    for v in a {
        indent(out, at);
        out.push_str("- ");
        match v {
            Value::Object(m) if !m.is_empty() => map(out, m, at + 2),
            Value::Array(inner) if !inner.is_empty() => {
                out.push('\n');
                seq(out, inner, at + 2);
            }
            other => {
                out.push_str(&scalar(other));
                out.push('\n');
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn strings_a_yaml_1_1_reader_would_take_for_something_else_are_quoted() {
        for tricky in [
            "yes",
            "No",
            "on",
            "OFF",
            "y",
            "~",
            "null",
            "1_000",
            "190:20:30",
            "0x1F",
            ".5e3",
            "012",
            "1e3",
            "-",
            "",
            " lead",
            "a: b",
            "#c",
            "*ref",
            "&a",
            "!tag",
            "@x",
            "`x",
            ".inf",
            ".NaN",
            "true",
            "2001-12-14",
        ] {
            let out = document(&json!({ "v": tricky }));
            assert!(out.starts_with("v: \""), "{tricky:?} → {out}");
        }
        assert_eq!(
            document(&json!({"image": "nginx:1.27"})),
            "image: \"nginx:1.27\"\n"
        );
        assert_eq!(
            document(&json!({"name": "web-1.b_c/d"})),
            "name: web-1.b_c/d\n"
        );
    }

    #[test]
    fn what_is_written_parses_back_to_the_same_value() {
        let v = json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "x", "annotations": {}, "labels": {"a": "yes"}},
            "spec": {
                "hostNetwork": true,
                "containers": [
                    {"name": "c", "args": ["--x", "on", ""], "ports": [{"containerPort": 80}]},
                    {"name": "d", "env": [], "command": [["nested", "list"]]}
                ],
                "weights": [1.5, -2, 0],
                "text": "line one\nline \"two\"\t\u{1F600} \u{2029}\u{85}\u{feff}\u{7f}"
            }
        });
        let out = document(&v);
        let back = crate::manifest::parse(&out).unwrap();
        assert_eq!(back, vec![v], "{out}");
        let long = json!({"a": [{ "k".repeat(2000): {"x": 1}, "y": 2 }], "k".repeat(1500): "v"});
        let out = document(&long);
        assert_eq!(crate::manifest::parse(&out).unwrap(), vec![long], "{out}");
    }
}
