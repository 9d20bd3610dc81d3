//! `${NAME}` in any string value, replaced from the environment after parsing; an unset or
//! malformed name is a problem naming the key (never echoing a value).

use super::Problems;

/// Replaces `${NAME}` inside every string, recursively; problems name the key.
pub(super) fn expand_env(
    key: &str,
    value: &mut toml::Value,
    env: &dyn Fn(&str) -> Option<String>,
    p: &mut Problems,
) {
    match value {
        toml::Value::String(s) if s.contains("${") => match expand_str(s, env) {
            Ok(expanded) => *s = expanded,
            Err(msg) => p.push(key, msg),
        },
        toml::Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                expand_env(&format!("{key}[{i}]"), item, env, p);
            }
        }
        toml::Value::Table(t) => {
            for (k, v) in t.iter_mut() {
                expand_env(&format!("{key}.{k}"), v, env, p);
            }
        }
        _ => {}
    }
}

pub(super) fn expand_str(s: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| "unterminated ${ in value".to_owned())?;
        let name = &after[..end];
        let valid = !name.is_empty()
            && !name.starts_with(|c: char| c.is_ascii_digit())
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            return Err(format!(
                "invalid environment variable name in ${{{name}}}: use letters, digits and _"
            ));
        }
        match env(name) {
            Some(v) => out.push_str(&v),
            None => return Err(format!("environment variable {name} is not set")),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}
