//! YAML streams in and out: several documents separated by `---`, in order. Comments do not
//! survive (the YAML is re-written from the objects); meaning does, for YAML 1.1 readers like
//! kubectl too (`yaml_out`).

use serde::Deserialize;
use serde_json::Value;

/// The documents of a YAML stream, empty ones dropped.
pub fn parse(text: &str) -> Result<Vec<Value>, String> {
    let mut docs = Vec::new();
    for (i, doc) in serde_norway::Deserializer::from_str(text).enumerate() {
        let value = Value::deserialize(doc).map_err(|e| format!("document {}: {e}", i + 1))?;
        if !value.is_null() {
            docs.push(value);
        }
    }
    Ok(docs)
}

/// The documents as one YAML stream.
pub fn render(docs: &[Value]) -> Result<String, String> {
    let mut out = String::new();
    for (i, doc) in docs.iter().enumerate() {
        if i > 0 {
            out.push_str("---\n");
        }
        out.push_str(&crate::yaml_out::document(doc));
    }
    Ok(out)
}
