//! YAML streams in and out: several documents separated by `---`, in order. Comments do not
//! survive (the YAML is re-written from the objects); meaning does, for YAML 1.1 readers like
//! kubectl too (`yaml_out`).

use serde::Deserialize;
use serde_json::Value;

/// Deeper than any Kubernetes object (a CronJob's container env is about 12 levels down).
const MAX_NESTING: usize = 64;

/// The documents of a YAML stream, empty ones dropped. A leading UTF-8 byte order mark is
/// skipped (editors on Windows write one); nesting deeper than [`MAX_NESTING`] and duplicate
/// keys are refused (kubectl refuses duplicate keys too).
pub fn parse(text: &str) -> Result<Vec<Value>, String> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    meshlet_defaults::check_yaml_nesting(text, MAX_NESTING)?;
    let mut docs = Vec::new();
    for (i, doc) in serde_norway::Deserializer::from_str(text).enumerate() {
        let Strict(value) =
            Strict::deserialize(doc).map_err(|e| format!("document {}: {e}", i + 1))?;
        if !value.is_null() {
            docs.push(value);
        }
    }
    Ok(docs)
}

/// A JSON value read from YAML, refusing a mapping that repeats a key: which of the two a
/// reader keeps differs between tools, so the manifest means nothing certain.
struct Strict(Value);

impl<'de> Deserialize<'de> for Strict {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor).map(Strict)
    }
}

struct StrictVisitor;

impl<'de> serde::de::Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a YAML value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(v.into())
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(v.into())
    }
    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Value, E> {
        serde_json::Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| {
                E::custom(format!(
                    "{v} cannot be carried in a manifest (JSON has no NaN or infinity)"
                ))
            })
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        Strict::deserialize(d).map(|s| s.0)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(Strict(v)) = seq.next_element()? {
            items.push(v);
        }
        Ok(Value::Array(items))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = serde_json::Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let Strict(v) = map.next_value()?;
            if out.insert(key.clone(), v).is_some() {
                return Err(serde::de::Error::custom(format!("duplicate key {key:?}")));
            }
        }
        Ok(Value::Object(out))
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_byte_order_mark_is_skipped() {
        let docs = parse("\u{feff}apiVersion: v1\nkind: Pod\n").unwrap();
        assert_eq!(docs[0]["kind"], "Pod");
    }

    #[test]
    fn deep_nesting_is_refused_at_once() {
        let started = std::time::Instant::now();
        let e = parse(&"[".repeat(100_000)).unwrap_err();
        assert!(e.contains("nested deeper"), "{e}");
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
    }

    #[test]
    fn duplicate_keys_are_an_error() {
        let e = parse("kind: Pod\nmetadata: {name: a}\nkind: Service\n").unwrap_err();
        assert!(e.contains("duplicate"), "{e}");
    }
}
