//! Python literals as OpenCLIP's flags take them through `ast.literal_eval`
//! (`--aug-cfg scale=(0.08,1.0)`): numbers, `True`/`False`/`None`, tuples and
//! lists of them, read with Python's syntax and written back in it; and
//! Python's rule for `_` between the digits of a number.

use serde_json::{json, Value};

/// The Python literals OpenCLIP's flags can hold: what `ast.literal_eval`
/// returns for numbers, True/False/None, tuples and lists.
#[derive(Debug, Clone, PartialEq)]
pub enum PyLiteral {
    /// Python's `None`.
    None,
    /// `True` or `False`.
    Bool(bool),
    /// An integer literal.
    Int(i64),
    /// A floating-point literal.
    Float(f64),
    /// `( ... )`
    Tuple(Vec<PyLiteral>),
    /// `[ ... ]`
    List(Vec<PyLiteral>),
}

impl PyLiteral {
    /// Parses `text` as a Python literal of the forms above.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut reader = LiteralReader {
            chars: text.chars().collect(),
            pos: 0,
        };
        let literal = reader.value()?;
        reader.skip_spaces();
        if reader.pos < reader.chars.len() {
            return Err(format!(
                "{text:?} is not a Python literal (numbers, True, False, None, tuples and lists of them)"
            ));
        }
        Ok(literal)
    }

    /// The value in JSON: None as null, tuples and lists as arrays.
    pub fn to_json(&self) -> Value {
        match self {
            Self::None => Value::Null,
            Self::Bool(yes) => json!(yes),
            Self::Int(n) => json!(n),
            Self::Float(x) => json!(x),
            Self::Tuple(items) | Self::List(items) => {
                Value::Array(items.iter().map(Self::to_json).collect())
            }
        }
    }

    pub(crate) fn as_number(&self) -> Option<f64> {
        match self {
            Self::Int(n) => Some(*n as f64),
            Self::Float(x) if x.is_finite() => Some(*x),
            _ => None,
        }
    }

    pub(crate) fn as_numbers(&self) -> Option<Vec<f64>> {
        match self {
            Self::Tuple(items) | Self::List(items) => items.iter().map(Self::as_number).collect(),
            _ => None,
        }
    }

    pub(crate) fn as_probability(&self) -> Option<f64> {
        self.as_number().filter(|p| (0.0..=1.0).contains(p))
    }

    /// A (low, high) pair of non-negative numbers with low <= high.
    pub(crate) fn as_range(&self) -> Option<(f64, f64)> {
        match self.as_numbers()?.as_slice() {
            [low, high] if 0.0 <= *low && low <= high => Some((*low, *high)),
            _ => None,
        }
    }

    /// One non-negative number, or 3 or 4 of them.
    pub(crate) fn as_color_jitter(&self) -> Option<Vec<f64>> {
        let values = match self.as_number() {
            Some(x) => vec![x],
            None => self.as_numbers().filter(|v| v.len() == 3 || v.len() == 4)?,
        };
        values.iter().all(|x| *x >= 0.0).then_some(values)
    }
}

impl std::fmt::Display for PyLiteral {
    /// Writes the literal back in Python syntax.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let join = |items: &[PyLiteral]| {
            items
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        };
        match self {
            Self::None => write!(f, "None"),
            Self::Bool(true) => write!(f, "True"),
            Self::Bool(false) => write!(f, "False"),
            Self::Int(n) => write!(f, "{n}"),
            Self::Float(x) => write!(f, "{x:?}"),
            Self::Tuple(items) if items.len() == 1 => write!(f, "({},)", join(items)),
            Self::Tuple(items) => write!(f, "({})", join(items)),
            Self::List(items) => write!(f, "[{}]", join(items)),
        }
    }
}

/// A recursive-descent reader over the characters of one literal.
struct LiteralReader {
    chars: Vec<char>,
    pos: usize,
}

impl LiteralReader {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn skip_spaces(&mut self) {
        while self.peek().is_some_and(char::is_whitespace) {
            self.pos += 1;
        }
    }

    fn value(&mut self) -> Result<PyLiteral, String> {
        self.skip_spaces();
        match self.peek() {
            Some('(') => {
                let (mut items, trailing_comma) = self.sequence(')')?;
                // `(x)` is just x in Python; `(x,)` and `()` are tuples.
                if items.len() == 1 && !trailing_comma {
                    Ok(items.remove(0))
                } else {
                    Ok(PyLiteral::Tuple(items))
                }
            }
            Some('[') => self.sequence(']').map(|(items, _)| PyLiteral::List(items)),
            Some(c) if c.is_ascii_digit() || matches!(c, '.' | '+' | '-') => self.number(),
            Some(c) if c.is_alphabetic() || c == '_' => self.keyword(),
            Some(c) => Err(format!("unexpected {c:?} in a Python literal")),
            None => Err("empty value; write a Python literal such as 0.5 or (0.9,1.0)".to_owned()),
        }
    }

    /// Reads `open items... close`, returning the items and whether a comma
    /// followed the last one.
    fn sequence(&mut self, close: char) -> Result<(Vec<PyLiteral>, bool), String> {
        self.pos += 1; // the opening bracket
        let mut items = Vec::new();
        let mut trailing_comma = false;
        loop {
            self.skip_spaces();
            if self.peek() == Some(close) {
                self.pos += 1;
                return Ok((items, trailing_comma));
            }
            items.push(self.value()?);
            self.skip_spaces();
            match self.peek() {
                Some(',') => {
                    self.pos += 1;
                    trailing_comma = true;
                }
                Some(c) if c == close => trailing_comma = false,
                _ => {
                    return Err(format!(
                        "expected ',' or '{close}' in a Python tuple or list"
                    ))
                }
            }
        }
    }

    fn number(&mut self) -> Result<PyLiteral, String> {
        let start = self.pos;
        let negative = self.peek() == Some('-');
        if matches!(self.peek(), Some('+' | '-')) {
            self.pos += 1;
            self.skip_spaces();
        }
        let digits_start = self.pos;
        let mut is_float = false;
        while let Some(c) = self.peek() {
            let follows_exponent =
                self.pos > digits_start && matches!(self.chars[self.pos - 1], 'e' | 'E');
            let exponent_sign = matches!(c, '+' | '-') && follows_exponent;
            if !(c.is_ascii_digit() || matches!(c, '_' | '.' | 'e' | 'E') || exponent_sign) {
                break;
            }
            is_float |= matches!(c, '.' | 'e' | 'E');
            self.pos += 1;
        }
        let text: String = self.chars[start..self.pos].iter().collect();
        let body: String = self.chars[digits_start..self.pos].iter().collect();
        let bad = || format!("{text:?} is not a number");
        let magnitude = if is_float {
            PyLiteral::Float(finite_number(&body).ok_or_else(bad)?)
        } else {
            PyLiteral::Int(
                without_digit_separators(&body)
                    .and_then(|digits| digits.parse().ok())
                    .ok_or_else(bad)?,
            )
        };
        Ok(match (negative, magnitude) {
            (true, PyLiteral::Float(x)) => PyLiteral::Float(-x),
            (true, PyLiteral::Int(n)) => PyLiteral::Int(-n),
            (_, literal) => literal,
        })
    }

    fn keyword(&mut self) -> Result<PyLiteral, String> {
        let start = self.pos;
        while self.peek().is_some_and(|c| c.is_alphanumeric() || c == '_') {
            self.pos += 1;
        }
        let word: String = self.chars[start..self.pos].iter().collect();
        match word.as_str() {
            "True" => Ok(PyLiteral::Bool(true)),
            "False" => Ok(PyLiteral::Bool(false)),
            "None" => Ok(PyLiteral::None),
            _ => Err(format!(
                "{word:?} is not a Python literal (write True, False or None, capitalised)"
            )),
        }
    }
}

/// A finite number in Python's float syntax, `_` separators allowed.
fn finite_number(text: &str) -> Option<f64> {
    without_digit_separators(text)
        .and_then(|digits| digits.parse::<f64>().ok())
        .filter(|number| number.is_finite())
}

/// Trims `text` and removes `_` digit separators, refusing a `_` that is not
/// between two digits (as Python does).
pub fn without_digit_separators(text: &str) -> Option<String> {
    let trimmed = text.trim();
    let chars: Vec<char> = trimmed.chars().collect();
    for (i, c) in chars.iter().enumerate() {
        if *c == '_' {
            let digit_before = i > 0 && chars[i - 1].is_ascii_digit();
            let digit_after = chars.get(i + 1).is_some_and(|next| next.is_ascii_digit());
            if !(digit_before && digit_after) {
                return None;
            }
        }
    }
    Some(trimmed.replace('_', ""))
}
