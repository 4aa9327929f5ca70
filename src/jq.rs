//! `fetch --jq`: jq filters run by jaq (a maintained jq implementation in Rust), with output
//! formatted as `gh api --jq` prints it.
//!
//! gh prints each result on its own line: strings raw, `null` as an empty line, numbers and
//! booleans as JSON, arrays and objects as compact JSON with sorted keys and `<`, `>`, `&`
//! escaped (Go's `encoding/json`).

use jaq_core::load::{Arena, File, Loader};
use jaq_core::{Compiler, Ctx, Vars, data, unwrap_valr};
use jaq_json::Val;

/// A compiled filter.
pub struct Filter {
    filter: jaq_core::compile::Filter<jaq_core::Native<data::JustLut<Val>>>,
}

impl Filter {
    /// Compiles `code`; the error names what is wrong with it.
    pub fn new(code: &str) -> Result<Filter, String> {
        let defs = jaq_core::defs()
            .chain(jaq_std::defs())
            .chain(jaq_json::defs());
        let funs = jaq_core::funs()
            .chain(jaq_std::funs())
            .chain(jaq_json::funs());
        let arena = Arena::default();
        let loader = Loader::new(defs);
        let modules = loader
            .load(&arena, File { code, path: () })
            .map_err(|errors| describe(code, errors.len()))?;
        let filter = Compiler::default()
            .with_funs(funs)
            .compile(modules)
            .map_err(|errors| describe(code, errors.len()))?;
        Ok(Filter { filter })
    }

    /// Runs the filter on a JSON document and returns what gh would print for it.
    pub fn run(&self, input: &[u8]) -> Result<Vec<u8>, String> {
        let input = jaq_json::read::parse_single(input)
            .map_err(|e| format!("the answer is not JSON: {e}"))?;
        let ctx = Ctx::<data::JustLut<Val>>::new(&self.filter.lut, Vars::new([]));
        let mut out = Vec::new();
        for value in self.filter.id.run((ctx, input)).map(unwrap_valr) {
            let value = value.map_err(|e| format!("{e}"))?;
            print_value(&value, &mut out)?;
            out.push(b'\n');
        }
        Ok(out)
    }
}

fn describe(code: &str, count: usize) -> String {
    let plural = if count == 1 { "" } else { "s" };
    format!(
        "cannot compile the jq filter {code:?} ({count} error{plural}); see https://jqlang.org/manual/"
    )
}

/// One result as gh prints it.
fn print_value(value: &Val, out: &mut Vec<u8>) -> Result<(), String> {
    match value {
        Val::Null => {}
        Val::TStr(text) | Val::BStr(text) => out.extend_from_slice(text),
        Val::Bool(_) | Val::Num(_) | Val::Arr(_) | Val::Obj(_) => {
            let mut parsed: serde_json::Value = serde_json::from_str(&value.to_string())
                .map_err(|e| format!("a jq result is not JSON: {e}"))?;
            go_numbers(&mut parsed);
            let text = serde_json::to_string(&parsed).map_err(|e| e.to_string())?;
            out.extend_from_slice(go_escape(&text).as_bytes());
        }
    }
    Ok(())
}

/// gh decodes every number as a float64 and Go prints an integral one without a fraction
/// (`0.0` → `0`, below 1e21).
fn go_numbers(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Number(n) => {
            if let Some(f) = n.as_f64().filter(|_| n.is_f64())
                && f.fract() == 0.0
                && f.abs() < 9.0e15
            {
                *n = serde_json::Number::from(f as i64);
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(go_numbers),
        serde_json::Value::Object(map) => map.values_mut().for_each(go_numbers),
        _ => {}
    }
}

/// Go's `json.Marshal` escapes these even inside strings (they only ever occur inside strings
/// in JSON text, so replacing them everywhere is exact).
fn go_escape(json: &str) -> String {
    json.replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026")
        .replace('\u{2028}', "\\u2028")
        .replace('\u{2029}', "\\u2029")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jq(code: &str, input: &str) -> String {
        String::from_utf8(Filter::new(code).unwrap().run(input.as_bytes()).unwrap()).unwrap()
    }

    #[test]
    fn prints_like_gh() {
        let input = r#"[{"name":"a","n":1,"x":null,"o":{"b":2,"a":"<&>"}},{"name":"b","n":2.5,"x":true,"o":[]}]"#;
        assert_eq!(jq(".[].name", input), "a\nb\n");
        assert_eq!(jq(".[].n", input), "1\n2.5\n");
        assert_eq!(jq("[1.0, 2.50]", "null"), "[1,2.5]\n");
        assert_eq!(jq(".[].x", input), "\ntrue\n");
        assert_eq!(
            jq(".[0].o", input),
            "{\"a\":\"\\u003c\\u0026\\u003e\",\"b\":2}\n"
        );
        assert_eq!(jq("map(.name) | length", input), "2\n");
    }

    #[test]
    fn bad_filters_and_inputs_are_errors() {
        assert!(Filter::new(".[").is_err());
        assert!(Filter::new("nosuchfunction").is_err());
        assert!(Filter::new(".").unwrap().run(b"not json").is_err());
        assert!(Filter::new(".a").unwrap().run(b"[1]").is_err());
    }
}
