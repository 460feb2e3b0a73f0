//! `GET /api/config/export`: the account as sequin.yaml. userhooks reads only its functions.

use serde::Deserialize;
use serde_norway::Value as Yaml;

use super::SequinError;

/// What userhooks reads of Sequin's config export: the functions (Sequin has no other way
/// to read one back).
#[derive(Clone, Debug, Default)]
pub struct ConfigExport {
    pub functions: Vec<ExportedFunction>,
}

/// One function as Sequin exports it (`Transforms.to_external(%Function{})`, without `id`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExportedFunction {
    pub name: String,
    /// `filter`, `transform`, `routing`, `enrichment` or `path`.
    pub kind: Option<String>,
    pub description: Option<String>,
    /// Absent for `path` functions.
    pub code: Option<String>,
}

impl ConfigExport {
    /// Parse the response `{"yaml": "..."}`. Only the `functions:` section is looked at; the
    /// rest (databases, endpoints, sinks) is skipped without being kept.
    pub(crate) fn from_response(text: &str) -> Result<Self, SequinError> {
        #[derive(Deserialize)]
        struct Envelope {
            yaml: String,
        }
        #[derive(Deserialize, Default)]
        struct Document {
            #[serde(default)]
            functions: Option<Vec<Yaml>>,
        }
        let envelope: Envelope = serde_json::from_str(text).map_err(|e| {
            SequinError::Protocol(format!("config export without a `yaml` string: {e}"))
        })?;
        // An account with nothing in it exports an empty document.
        let document: Option<Document> = serde_norway::from_str(&envelope.yaml)
            .map_err(|e| SequinError::Protocol(format!("config export is not YAML: {e}")))?;
        let functions = document
            .and_then(|d| d.functions)
            .unwrap_or_default()
            .iter()
            .filter_map(ExportedFunction::from_yaml)
            .collect();
        Ok(ConfigExport { functions })
    }

    pub fn function(&self, name: &str) -> Option<&ExportedFunction> {
        self.functions.iter().find(|f| f.name == name)
    }
}

impl ExportedFunction {
    /// Read leniently: a field of an unexpected type counts as absent rather than failing
    /// the whole export (a function without a readable name is skipped).
    fn from_yaml(item: &Yaml) -> Option<Self> {
        let text = |key: &str| item.get(key).and_then(Yaml::as_str).map(String::from);
        Some(ExportedFunction {
            name: text("name")?,
            kind: text("type"),
            description: text("description"),
            code: text("code"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn export(yaml: &str) -> Result<ConfigExport, SequinError> {
        ConfigExport::from_response(&serde_json::json!({ "yaml": yaml }).to_string())
    }

    #[test]
    fn functions_are_read_and_everything_else_skipped() {
        // As Ymlr renders it: a document marker, sections by type, block scalars for code.
        let yaml = "---\ndatabases:\n  - name: app\n    password: pos*****d\nfunctions:\n  - code: |-\n      def filter(action, record, changes, metadata) do\n        true\n      end\n    description: keeps all\n    name: f1\n    type: filter\n  - name: p1\n    path: record\n    type: path\nsinks:\n  - name: s\n    actions: [insert]\n";
        let export = export(yaml).unwrap();
        assert_eq!(export.functions.len(), 2);
        let f1 = export.function("f1").unwrap();
        assert_eq!(f1.kind.as_deref(), Some("filter"));
        assert_eq!(f1.description.as_deref(), Some("keeps all"));
        assert_eq!(
            f1.code.as_deref(),
            Some("def filter(action, record, changes, metadata) do\n  true\nend")
        );
        assert_eq!(export.function("p1").unwrap().code, None);
        assert!(export.function("s").is_none());
    }

    #[test]
    fn an_empty_account_has_no_functions() {
        for yaml in ["", "---\n", "---\ndatabases: []\n"] {
            assert!(export(yaml).unwrap().functions.is_empty(), "{yaml:?}");
        }
    }

    #[test]
    fn a_broken_export_is_a_protocol_error() {
        for text in [
            r#"{"resources": []}"#.to_string(),
            serde_json::json!({"yaml": "functions: [\n"}).to_string(),
        ] {
            let err = ConfigExport::from_response(&text).unwrap_err();
            assert!(matches!(err, SequinError::Protocol(_)), "{text}: {err:?}");
        }
    }
}
