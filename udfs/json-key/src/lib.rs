//! `json-key`: a map that keys each record by a field of its JSON value
//! (`{"field": "start"}`): a string field's text, or a number's decimal
//! form. The value and timestamp are kept. A record whose value is not a
//! JSON object with that field (a string or a number) fails.

use sluice_guest::{Error, Map, Output, Record};

struct JsonKey {
    field: String,
}

impl Map for JsonKey {
    fn open(config: &str) -> Result<Self, Error> {
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Config {
            field: String,
        }
        let c: Config = serde_json::from_str(config).map_err(|e| Error::new(format!("config: {e} (expected {{\"field\": \"…\"}})")))?;
        Ok(JsonKey { field: c.field })
    }

    fn map<'a>(&mut self, record: Record<'a>) -> Result<Output<'a>, Error> {
        let value: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(record.value)?;
        let key = match value.get(&self.field) {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(serde_json::Value::Number(n)) => n.to_string(),
            _ => return Err(Error::new(format!("the value has no string or number field `{}`", self.field))),
        };
        Ok(Output {
            key: Some(key.into_bytes().into()),
            value: record.value.into(),
            timestamp: record.timestamp,
        })
    }
}

sluice_guest::export_map!(JsonKey);
