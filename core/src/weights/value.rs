//! [`Value`]: the plain data a PyTorch pickle may hold besides model weights,
//! such as an optimizer's `state_dict()` in a training checkpoint.

use tch::Tensor;

/// A Python value read from or written to a weights pickle: containers,
/// scalars and tensors, nothing else. Dicts keep their order; keys may be
/// any value (optimizer state is keyed by parameter index).
#[derive(Debug)]
pub enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    List(Vec<Value>),
    Tuple(Vec<Value>),
    Dict(Vec<(Value, Value)>),
    /// A `collections.OrderedDict`, the type of a module's `state_dict()`.
    /// Written as one; reading gives [`Value::Dict`] for both kinds.
    OrderedDict(Vec<(Value, Value)>),
    Tensor(Tensor),
}

impl Value {
    /// A model `state_dict()`: an ordered dict of names to tensors, in the
    /// order given. The tensors are shallow clones sharing storage with
    /// `named`.
    pub fn state_dict(named: &[(String, Tensor)]) -> Value {
        Value::OrderedDict(
            named
                .iter()
                .map(|(name, tensor)| {
                    (
                        Value::Str(name.clone()),
                        Value::Tensor(tensor.shallow_clone()),
                    )
                })
                .collect(),
        )
    }

    /// The same value, its tensors mapped by `tensor` (a copy, a move to
    /// another device, a shallow clone).
    pub fn map_tensors(&self, tensor: &impl Fn(&Tensor) -> Tensor) -> Value {
        let pairs = |items: &[(Value, Value)]| {
            items
                .iter()
                .map(|(k, v)| (k.map_tensors(tensor), v.map_tensors(tensor)))
                .collect()
        };
        match self {
            Value::None => Value::None,
            Value::Bool(b) => Value::Bool(*b),
            Value::Int(i) => Value::Int(*i),
            Value::Float(f) => Value::Float(*f),
            Value::Str(s) => Value::Str(s.clone()),
            Value::Bytes(b) => Value::Bytes(b.clone()),
            Value::List(items) => {
                Value::List(items.iter().map(|v| v.map_tensors(tensor)).collect())
            }
            Value::Tuple(items) => {
                Value::Tuple(items.iter().map(|v| v.map_tensors(tensor)).collect())
            }
            Value::Dict(items) => Value::Dict(pairs(items)),
            Value::OrderedDict(items) => Value::OrderedDict(pairs(items)),
            Value::Tensor(t) => Value::Tensor(tensor(t)),
        }
    }

    /// Bytes held by the value's tensors.
    pub fn tensor_bytes(&self) -> u64 {
        let pairs = |items: &[(Value, Value)]| -> u64 {
            items
                .iter()
                .map(|(k, v)| k.tensor_bytes() + v.tensor_bytes())
                .sum()
        };
        match self {
            Value::List(items) | Value::Tuple(items) => items.iter().map(Value::tensor_bytes).sum(),
            Value::Dict(items) | Value::OrderedDict(items) => pairs(items),
            Value::Tensor(t) => crate::train::snapshot::bytes_of(t),
            _ => 0,
        }
    }

    /// The value under the string `key`, if this is a dict that has it.
    pub fn get(&self, key: &str) -> Option<&Value> {
        let (Value::Dict(items) | Value::OrderedDict(items)) = self else {
            return None;
        };
        items
            .iter()
            .rev()
            .find(|(k, _)| matches!(k, Value::Str(s) if s == key))
            .map(|(_, v)| v)
    }

    /// The number this holds, if it is an int or a float.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::Int(i) => Some(i as f64),
            Value::Float(f) => Some(f),
            _ => None,
        }
    }
}
