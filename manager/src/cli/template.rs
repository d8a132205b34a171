//! A small subset of Go's `text/template` for `--format`, evaluated over the Docker-shaped JSON of what is shown.
//!
//! Supported: literal text; actions with fields (`{{.Spec.Name}}`, `{{.}}`), string arguments (`"…"` or
//! `` `…` ``), the functions `json`, `join`, `lower`, `upper`, `title` and `len`, pipes (`{{.Spec.Name | upper}}`),
//! `{{-`/`-}}` trimming and `{{/* comments */}}`. Control structures (`if`, `range`, `with`, ...) and variables
//! are refused with an error rather than misread. Output follows Go's rules where JSON allows: a missing field
//! prints `<no value>`, `null` prints `<nil>`, strings print bare; objects and lists print as compact JSON.
//! Errors are worded as Go's (`template: :1: function "foo" not defined`).

use serde_json::Value;

/// A template that failed to parse or to run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("template: {0}")]
pub struct Error(String);

/// A parsed template.
#[derive(Debug, Clone)]
pub struct Template {
    nodes: Vec<Node>,
}

#[derive(Debug, Clone)]
enum Node {
    Text(String),
    Action(Action),
}

#[derive(Debug, Clone)]
struct Action {
    /// Line the action starts on, for errors.
    line: usize,
    /// The action as written, for execution errors (`at <.Spec.Name.X>`).
    source: String,
    /// Commands separated by `|`; each after the first gets the previous result as its last argument.
    pipeline: Vec<Command>,
}

#[derive(Debug, Clone)]
enum Command {
    /// A lone operand: `.Spec.Name`, `.`, `"text"`.
    Operand(Operand),
    /// A function and the arguments written after it.
    Call(Func, Vec<Operand>),
}

#[derive(Debug, Clone)]
enum Operand {
    /// `.` (an empty path) or `.A.B`.
    Field(Vec<String>),
    /// A string literal.
    Str(String),
}

#[derive(Debug, Clone, Copy)]
enum Func {
    Json,
    Join,
    Lower,
    Upper,
    Title,
    Len,
}

/// Go's keywords: they start control structures this subset does not have.
const KEYWORDS: [&str; 10] = ["if", "else", "end", "range", "with", "define", "template", "block", "break", "continue"];

impl Func {
    fn named(name: &str) -> Option<Self> {
        Some(match name {
            "json" => Self::Json,
            "join" => Self::Join,
            "lower" => Self::Lower,
            "upper" => Self::Upper,
            "title" => Self::Title,
            "len" => Self::Len,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            Self::Json => "json",
            Self::Join => "join",
            Self::Lower => "lower",
            Self::Upper => "upper",
            Self::Title => "title",
            Self::Len => "len",
        }
    }

    /// Arguments it takes, a piped value included.
    fn arity(self) -> usize {
        match self {
            Self::Join => 2,
            _ => 1,
        }
    }

    /// Applies the function; `None` is a missing value.
    fn call(self, args: Vec<Option<Value>>) -> Result<Option<Value>, String> {
        let mut args = args.into_iter();
        let first = args.next().flatten();
        let text = |v: Option<Value>| match v {
            Some(Value::String(s)) => Ok(s),
            other => Err(format!("wrong type for value; expected string; got {}", type_name(other.as_ref()))),
        };
        let out = match self {
            // Docker's `json` marshals a nil value as `null`.
            Self::Json => Value::String(first.map_or_else(|| "null".to_owned(), |v| v.to_string())),
            Self::Join => {
                let Some(Value::Array(items)) = first else {
                    return Err(format!("join: expected a list, got {}", type_name(first.as_ref())));
                };
                let sep = text(args.next().flatten())?;
                Value::String(items.iter().map(|i| show(Some(i))).collect::<Vec<_>>().join(&sep))
            }
            Self::Lower => Value::String(text(first)?.to_lowercase()),
            Self::Upper => Value::String(text(first)?.to_uppercase()),
            Self::Title => Value::String(title(&text(first)?)),
            Self::Len => Value::from(match &first {
                Some(Value::Array(a)) => a.len(),
                Some(Value::Object(o)) => o.len(),
                Some(Value::String(s)) => s.len(),
                other => return Err(format!("len of type {}", type_name(other.as_ref()))),
            }),
        };
        Ok(Some(out))
    }
}

/// Upper-cases the first letter of each word, as Go's `strings.Title`.
fn title(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut word_start = true;
    for c in s.chars() {
        if word_start {
            out.extend(c.to_uppercase());
        } else {
            out.push(c);
        }
        word_start = !c.is_alphanumeric() && c != '_' && c != '\'';
    }
    out
}

fn type_name(v: Option<&Value>) -> &'static str {
    match v {
        None => "<no value>",
        Some(Value::Null) => "nil",
        Some(Value::Bool(_)) => "bool",
        Some(Value::Number(_)) => "number",
        Some(Value::String(_)) => "string",
        Some(Value::Array(_)) => "list",
        Some(Value::Object(_)) => "object",
    }
}

/// How an action prints a value.
fn show(v: Option<&Value>) -> String {
    match v {
        None => "<no value>".to_owned(),
        Some(Value::Null) => "<nil>".to_owned(),
        Some(Value::String(s)) => s.clone(),
        // Go prints a whole float without a fraction (`0`, not `0.0`).
        Some(Value::Number(n)) if n.is_f64() => n.as_f64().map_or_else(|| n.to_string(), |f| f.to_string()),
        Some(other) => other.to_string(),
    }
}

impl Template {
    /// Parses `src`, refusing unknown functions and malformed actions.
    pub fn parse(src: &str) -> Result<Self, Error> {
        let mut nodes = Vec::new();
        let mut rest = src;
        let mut line = 1;
        let mut trim_text_start = false;
        while let Some(open) = rest.find("{{") {
            let text = if trim_text_start { rest[..open].trim_start() } else { &rest[..open] };
            line += text_lines(&rest[..open]);
            let piece = split_action(&rest[open + 2..]).map_err(|m| Error(format!(":{line}: {m}")))?;
            let text = if piece.trim_before { text.trim_end() } else { text };
            if !text.is_empty() {
                nodes.push(Node::Text(text.to_owned()));
            }
            if let Some(body) = piece.body {
                let pipeline = parse_pipeline(body).map_err(|m| Error(format!(":{line}: {m}")))?;
                nodes.push(Node::Action(Action { line, source: body.trim().to_owned(), pipeline }));
            }
            line += text_lines(&rest[open..open + 2 + piece.len]);
            rest = &rest[open + 2 + piece.len..];
            trim_text_start = piece.trim_after;
        }
        let text = if trim_text_start { rest.trim_start() } else { rest };
        if !text.is_empty() {
            nodes.push(Node::Text(text.to_owned()));
        }
        Ok(Self { nodes })
    }

    /// Runs the template over `data`.
    pub fn execute(&self, data: &Value) -> Result<String, Error> {
        let mut out = String::new();
        for node in &self.nodes {
            match node {
                Node::Text(t) => out.push_str(t),
                Node::Action(a) => out.push_str(&show(a.run(data)?.as_ref())),
            }
        }
        Ok(out)
    }
}

fn text_lines(s: &str) -> usize {
    s.matches('\n').count()
}

/// One action cut out of the text after its `{{`.
struct Piece<'a> {
    /// What is inside the delimiters and trim markers; `None` for a comment.
    body: Option<&'a str>,
    /// Bytes from after `{{` to after `}}`.
    len: usize,
    /// `{{- `: trim the white space before.
    trim_before: bool,
    /// ` -}}`: trim the white space after.
    trim_after: bool,
}

/// Finds the end of the action that starts `s` (just after `{{`).
fn split_action(s: &str) -> Result<Piece<'_>, String> {
    // A trim marker needs white space beside it: `{{-3}}` is the number -3 in Go.
    let trim_before = s.starts_with('-') && s[1..].starts_with(|c: char| c.is_ascii_whitespace());
    let start = if trim_before { 2 } else { 0 };
    let inner = &s[start..];
    if inner.trim_start().starts_with("/*") {
        let (len, trim_after) = comment_end(inner)?;
        return Ok(Piece { body: None, len: start + len, trim_before, trim_after });
    }
    let close = find_close(inner)?;
    let body = &inner[..close];
    let trim_after = body.ends_with('-') && body[..body.len() - 1].ends_with(|c: char| c.is_ascii_whitespace());
    let body = if trim_after { &body[..body.len() - 1] } else { body };
    Ok(Piece { body: Some(body), len: start + close + 2, trim_before, trim_after })
}

/// The length of a `/* comment */}}` (closing delimiter included), and whether it ends with ` -}}`.
fn comment_end(s: &str) -> Result<(usize, bool), String> {
    let end = s.find("*/").ok_or("unclosed comment")? + 2;
    let after = &s[end..];
    let space = after.len() - after.trim_start_matches(|c: char| c.is_ascii_whitespace()).len();
    if after.starts_with("}}") {
        Ok((end + 2, false))
    } else if space > 0 && after[space..].starts_with("-}}") {
        Ok((end + space + 3, true))
    } else {
        Err("comment ends before closing delimiter".into())
    }
}

/// The offset of the `}}` that closes an action, outside string literals.
fn find_close(s: &str) -> Result<usize, String> {
    let mut quote: Option<char> = None;
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        match quote {
            Some('"') if escaped => escaped = false,
            Some('"') if c == '\\' => escaped = true,
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == '"' || c == '`' => quote = Some(c),
            None if s[i..].starts_with("}}") => return Ok(i),
            None => {}
        }
    }
    Err(match quote {
        Some('"') => "unterminated quoted string",
        Some(_) => "unterminated raw quoted string",
        None => "unclosed action",
    }
    .into())
}

/// One word of an action.
#[derive(Debug)]
enum Token {
    Pipe,
    Ident(String),
    Operand(Operand),
}

fn tokens(body: &str) -> Result<Vec<Token>, String> {
    let mut out = Vec::new();
    let mut chars = body.char_indices().peekable();
    let word_end = |from: usize| {
        body[from..].find(|c: char| !(c.is_alphanumeric() || c == '_' || c == '.')).map_or(body.len(), |n| from + n)
    };
    while let Some(&(i, c)) = chars.peek() {
        let end = match c {
            _ if c.is_whitespace() => i + c.len_utf8(),
            '|' => {
                out.push(Token::Pipe);
                i + 1
            }
            '"' => {
                let close = i + quoted_end(&body[i..]).ok_or("unterminated quoted string")?;
                let quoted = &body[i..close];
                let s: String = serde_json::from_str(quoted).map_err(|_| format!("bad string {quoted}"))?;
                out.push(Token::Operand(Operand::Str(s)));
                close
            }
            '`' => {
                let close = body[i + 1..].find('`').ok_or("unterminated raw quoted string")? + i + 1;
                out.push(Token::Operand(Operand::Str(body[i + 1..close].to_owned())));
                close + 1
            }
            '.' => {
                let end = word_end(i);
                out.push(Token::Operand(Operand::Field(field_path(&body[i..end])?)));
                end
            }
            '$' => return Err("variables are not supported".into()),
            '(' | ')' => return Err("parenthesised pipelines are not supported".into()),
            _ if c.is_alphabetic() || c == '_' => {
                let end = body[i..].find(|c: char| !(c.is_alphanumeric() || c == '_')).map_or(body.len(), |n| i + n);
                out.push(Token::Ident(body[i..end].to_owned()));
                end
            }
            _ => return Err(format!("unexpected {:?} in command", &body[i..word_end(i + c.len_utf8())])),
        };
        while chars.peek().is_some_and(|&(j, _)| j < end) {
            chars.next();
        }
    }
    Ok(out)
}

/// The length of the `"..."` literal `s` starts with, closing quote included.
fn quoted_end(s: &str) -> Option<usize> {
    let mut escaped = false;
    for (i, c) in s.char_indices().skip(1) {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '"' => return Some(i + 1),
            _ => {}
        }
    }
    None
}

/// `.A.B` → `["A", "B"]`; `.` → `[]`.
fn field_path(word: &str) -> Result<Vec<String>, String> {
    if word == "." {
        return Ok(Vec::new());
    }
    let fields: Vec<String> = word[1..].split('.').map(str::to_owned).collect();
    let bad = |f: &String| f.is_empty() || f.starts_with(|c: char| c.is_ascii_digit());
    if fields.iter().any(bad) {
        return Err(format!("bad field {word:?}"));
    }
    Ok(fields)
}

fn parse_pipeline(body: &str) -> Result<Vec<Command>, String> {
    let mut commands = Vec::new();
    let mut words = Vec::new();
    for t in tokens(body)? {
        match t {
            Token::Pipe => commands.push(parse_command(std::mem::take(&mut words), !commands.is_empty())?),
            word => words.push(word),
        }
    }
    commands.push(parse_command(words, !commands.is_empty())?);
    Ok(commands)
}

/// One command of a pipeline; `piped` when it follows a `|`.
fn parse_command(words: Vec<Token>, piped: bool) -> Result<Command, String> {
    let mut words = words.into_iter();
    let operand = |t: Token| match t {
        Token::Operand(o) => Ok(o),
        Token::Ident(name) => Err(format!("unexpected {name:?} in operand: only fields and strings are arguments")),
        Token::Pipe => Err("missing value for command".to_owned()),
    };
    match words.next() {
        None => Err("missing value for command".into()),
        Some(Token::Ident(name)) => {
            if KEYWORDS.contains(&name.as_str()) {
                return Err(format!(
                    "{{{{{name}}}}} is not supported: only fields, functions and pipes are (no if, range or with)"
                ));
            }
            let func = Func::named(&name).ok_or_else(|| format!("function {name:?} not defined"))?;
            let args = words.map(operand).collect::<Result<Vec<_>, _>>()?;
            let got = args.len() + usize::from(piped);
            if got != func.arity() {
                return Err(format!("wrong number of args for {}: want {} got {got}", func.name(), func.arity()));
            }
            Ok(Command::Call(func, args))
        }
        Some(first) => {
            let first = operand(first)?;
            if piped || words.next().is_some() {
                return Err(format!("can't give argument to non-function {}", describe(&first)));
            }
            Ok(Command::Operand(first))
        }
    }
}

fn describe(o: &Operand) -> String {
    match o {
        Operand::Field(path) => format!(".{}", path.join(".")),
        Operand::Str(s) => format!("{s:?}"),
    }
}

impl Action {
    fn run(&self, data: &Value) -> Result<Option<Value>, Error> {
        let fail = |m: String| Error(format!(":{}: executing \"\" at <{}>: {m}", self.line, self.source));
        let mut piped: Option<Option<Value>> = None;
        for command in &self.pipeline {
            let result = match command {
                Command::Operand(o) => evaluate(o, data),
                Command::Call(func, args) => {
                    let mut values = args.iter().map(|a| evaluate(a, data)).collect::<Result<Vec<_>, _>>();
                    if let (Ok(v), Some(p)) = (&mut values, piped.take()) {
                        v.push(p);
                    }
                    values.and_then(|v| func.call(v))
                }
            };
            piped = Some(result.map_err(fail)?);
        }
        Ok(piped.flatten())
    }
}

/// An operand's value; `None` when a field is missing (Go's "no value").
fn evaluate(o: &Operand, data: &Value) -> Result<Option<Value>, String> {
    let path = match o {
        Operand::Str(s) => return Ok(Some(Value::String(s.clone()))),
        Operand::Field(path) => path,
    };
    let mut at = Some(data);
    for field in path {
        at = match at {
            // Like Go over a map: a field of nothing is nothing, not an error.
            None | Some(Value::Null) => None,
            Some(Value::Object(m)) => m.get(field),
            Some(other) => return Err(format!("can't evaluate field {field} in type {}", type_name(Some(other)))),
        };
    }
    Ok(at.cloned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    proptest! {
        /// Whatever a user types after `-f`, the answer is output or a `template:` error,
        /// never a panic.
        #[test]
        fn any_input_parses_and_runs_or_errs(src in "(\\{\\{|\\}\\}|[ .|\"`/*a-zA-Z0-9é-]){0,40}") {
            if let Ok(t) = Template::parse(&src) {
                let _ = t.execute(&data());
            }
        }
    }

    fn data() -> Value {
        json!({
            "ID": "abc123",
            "Spec": { "Name": "web", "Args": ["httpd", "-f"], "Ratio": 0.0, "Half": 0.25, "Replicas": 3, "On": true },
            "UpdateStatus": { "State": "paused", "Message": "update paused" },
            "Nothing": null,
        })
    }

    fn run(src: &str) -> Result<String, Error> {
        Template::parse(src)?.execute(&data())
    }

    fn error(src: &str) -> String {
        run(src).unwrap_err().to_string()
    }

    #[test]
    fn fields_and_text_print_like_go() {
        assert_eq!(run("{{.Spec.Name}} {{.ID}}").unwrap(), "web abc123");
        assert_eq!(run("name={{ .Spec.Name }}!").unwrap(), "name=web!");
        assert_eq!(run("{{.UpdateStatus.State}}").unwrap(), "paused");
        assert_eq!(run("{{.Spec.Replicas}} {{.Spec.On}} {{.Spec.Ratio}} {{.Spec.Half}}").unwrap(), "3 true 0 0.25");
        assert_eq!(run("{{.Spec.Args}}").unwrap(), r#"["httpd","-f"]"#);
        assert_eq!(run("{{.UpdateStatus}}").unwrap(), r#"{"State":"paused","Message":"update paused"}"#);
        assert_eq!(run("{{.Missing}} {{.Missing.Deeper}} {{.Nothing}}").unwrap(), "<no value> <no value> <nil>");
        assert_eq!(run("plain text").unwrap(), "plain text");
    }

    #[test]
    fn json_prints_compact_json_and_null_for_missing() {
        assert_eq!(run("{{json .UpdateStatus}}").unwrap(), r#"{"State":"paused","Message":"update paused"}"#);
        assert_eq!(run("{{json .Spec.Name}}").unwrap(), r#""web""#);
        assert_eq!(run("{{json .Missing}}").unwrap(), "null");
        assert_eq!(run("{{json .}}").unwrap(), data().to_string());
    }

    #[test]
    fn functions_pipes_strings_trimming_and_comments() {
        assert_eq!(run("{{.Spec.Name | upper}}").unwrap(), "WEB");
        assert_eq!(run("{{upper .Spec.Name | lower}}").unwrap(), "web");
        assert_eq!(run(r#"{{join .Spec.Args " "}}"#).unwrap(), "httpd -f");
        assert_eq!(run(r#"{{join .Spec.Args "}}"}}"#).unwrap(), "httpd}}-f");
        assert_eq!(run("{{join .Spec.Args `, `}}").unwrap(), "httpd, -f");
        assert_eq!(run("{{len .Spec.Args}} {{title \"hello world\"}}").unwrap(), "2 Hello World");
        assert_eq!(run("a  {{- .ID -}}  b").unwrap(), "aabc123b");
        assert_eq!(run("a {{/* a comment */}}b").unwrap(), "a b");
        assert_eq!(run("a {{- /* trimmed */ -}} b").unwrap(), "ab");
        assert_eq!(run("{{\"x\\\"y\"}}").unwrap(), "x\"y");
    }

    #[test]
    fn bad_templates_fail_to_parse_with_go_like_errors() {
        assert_eq!(error("{{foo .ID}}"), r#"template: :1: function "foo" not defined"#);
        assert_eq!(error("{{.ID"), "template: :1: unclosed action");
        assert_eq!(error("line\n{{.ID}}\n{{nope}}"), r#"template: :3: function "nope" not defined"#);
        assert_eq!(error("{{}}"), "template: :1: missing value for command");
        assert_eq!(error("{{.ID |}}"), "template: :1: missing value for command");
        assert_eq!(error("{{json}}"), "template: :1: wrong number of args for json: want 1 got 0");
        assert_eq!(error("{{json .ID .ID}}"), "template: :1: wrong number of args for json: want 1 got 2");
        assert_eq!(error("{{.ID .Spec}}"), "template: :1: can't give argument to non-function .ID");
        assert_eq!(error("{{.ID | .Spec}}"), "template: :1: can't give argument to non-function .Spec");
        assert!(error("{{range .Spec.Args}}{{.}}{{end}}").contains("{{range}} is not supported"));
        assert!(error("{{$x := .ID}}").contains("variables are not supported"));
        assert!(error("{{\"open}}").contains("unterminated quoted string"));
        assert!(error("{{/* open }}").contains("unclosed comment"));
        assert!(error("{{.A..B}}").contains("bad field"));
        assert!(Template::parse("{{.ID}} }} {").is_ok(), "a lone }} is text, as in Go");
    }

    #[test]
    fn type_errors_surface_when_run() {
        assert_eq!(
            error("{{.Spec.Name.First}}"),
            r#"template: :1: executing "" at <.Spec.Name.First>: can't evaluate field First in type string"#
        );
        assert!(error("{{upper .Spec.Replicas}}").contains("expected string; got number"));
        assert!(error("{{join .Spec.Name \",\"}}").contains("join: expected a list"));
        assert!(error("{{len .Missing}}").contains("len of type <no value>"));
    }
}
