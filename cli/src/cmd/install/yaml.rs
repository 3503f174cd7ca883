//! Multi-document YAML in and out, through `serde_json::Value` so the rest of the
//! code manipulates one JSON-shaped tree.

use anyhow::Context;
use serde::Deserialize;
use serde_json::Value;

/// Every non-empty document of a `---`-separated YAML stream.
pub fn parse_documents(text: &str, source: &str) -> anyhow::Result<Vec<Value>> {
    let mut docs = Vec::new();
    for (i, de) in yaml_serde::Deserializer::from_str(text).enumerate() {
        let v = Value::deserialize(de)
            .with_context(|| format!("{source}: document {} is not valid YAML", i + 1))?;
        if !v.is_null() {
            docs.push(v);
        }
    }
    Ok(docs)
}

/// Documents as one YAML stream, `---` between them.
pub fn to_stream(docs: &[Value]) -> anyhow::Result<String> {
    let mut out = String::new();
    for d in docs {
        out.push_str("---\n");
        out.push_str(&yaml_serde::to_string(d).context("encoding YAML")?);
    }
    Ok(out)
}
