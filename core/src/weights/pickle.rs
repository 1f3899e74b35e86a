//! A restricted unpickler for the `data.pkl` record of `torch.save` archives.
//!
//! It reads the pickle opcodes of protocols 2 to 5 and builds an [`Object`]
//! tree, but it never imports or calls anything the pickle names: the only
//! globals it accepts are the handful `torch.save` uses for tensors, storages
//! and `collections.OrderedDict`, and those are interpreted here, in Rust. Any
//! other global is refused with an error naming it, so a crafted file cannot
//! run code. Tensors stay lazy ([`TensorRecord`]): the unpickler only records
//! which storage and which strided view they are, and `torch_zip` reads the
//! bytes when a tensor is actually wanted.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use anyhow::{anyhow, bail, ensure, Result};
use tch::Kind;

/// A storage named by a persistent-id record: the archive entry (`data/<key>`)
/// that holds its bytes, the element type, and its length in elements.
#[derive(Clone, Debug)]
pub(crate) struct StorageRef {
    pub key: String,
    pub kind: Kind,
    pub numel: i64,
}

/// A tensor as `torch._utils._rebuild_tensor_v2` describes it: a strided view
/// of a storage, already checked to lie inside that storage.
#[derive(Clone, Debug)]
pub(crate) struct TensorRecord {
    pub storage: StorageRef,
    pub offset: i64,
    pub size: Vec<i64>,
    pub stride: Vec<i64>,
}

/// The globals a weights pickle may name; everything else is refused.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Global {
    RebuildTensor,
    RebuildParameter,
    RebuildParameterWithState,
    OrderedDict,
    /// `bytes()`: how protocol 2 writes an empty `bytes` value.
    EmptyBytes,
    /// `_codecs.encode(text, "latin1")`: how protocol 2 writes a `bytes` value.
    Latin1Encode,
    StorageType(Kind),
}

impl Global {
    fn from_name(module: &str, name: &str) -> Option<Global> {
        let global = match (module, name) {
            ("torch._utils", "_rebuild_tensor_v2") => Global::RebuildTensor,
            ("torch._utils", "_rebuild_parameter") => Global::RebuildParameter,
            ("torch._utils", "_rebuild_parameter_with_state") => Global::RebuildParameterWithState,
            ("collections", "OrderedDict") => Global::OrderedDict,
            ("builtins" | "__builtin__", "bytes") => Global::EmptyBytes,
            ("_codecs", "encode") => Global::Latin1Encode,
            ("torch", storage) => Global::StorageType(storage_kind(storage)?),
            _ => return None,
        };
        Some(global)
    }
}

/// torch's typed storage classes (`torch.FloatStorage`, ...) and the element
/// type each holds: how a `torch.save` pickle names a storage's dtype.
pub(crate) const STORAGE_CLASSES: [(&str, Kind); 10] = [
    ("DoubleStorage", Kind::Double),
    ("FloatStorage", Kind::Float),
    ("HalfStorage", Kind::Half),
    ("BFloat16Storage", Kind::BFloat16),
    ("LongStorage", Kind::Int64),
    ("IntStorage", Kind::Int),
    ("ShortStorage", Kind::Int16),
    ("CharStorage", Kind::Int8),
    ("ByteStorage", Kind::Uint8),
    ("BoolStorage", Kind::Bool),
];

/// The element type of one of torch's typed storage classes.
fn storage_kind(storage_class: &str) -> Option<Kind> {
    STORAGE_CLASSES
        .iter()
        .find(|(class, _)| *class == storage_class)
        .map(|&(_, kind)| kind)
}

/// A Python list, shared by every reference to it.
type SharedList = Rc<RefCell<Vec<Object>>>;
/// A Python dict (items in insertion order), shared by every reference to it.
type SharedDict = Rc<RefCell<Vec<(Object, Object)>>>;

/// A value on the unpickler's stack. Lists and dicts are shared and mutable,
/// as in Python, because a pickle memoizes a container before filling it.
#[derive(Clone)]
pub(crate) enum Object {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    List(SharedList),
    Tuple(Rc<Vec<Object>>),
    Dict(SharedDict),
    Tensor(Rc<TensorRecord>),
    Storage(StorageRef),
    Global(Global),
}

impl Object {
    /// What this object is, for error messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Object::None => "None",
            Object::Bool(_) => "bool",
            Object::Int(_) => "int",
            Object::Float(_) => "float",
            Object::Str(_) => "str",
            Object::Bytes(_) => "bytes",
            Object::List(_) => "list",
            Object::Tuple(_) => "tuple",
            Object::Dict(_) => "dict",
            Object::Tensor(_) => "tensor",
            Object::Storage(_) => "storage",
            Object::Global(_) => "global",
        }
    }

    /// The value stored under the string `key`, if this is a dict that has it.
    pub fn get(&self, key: &str) -> Option<Object> {
        let Object::Dict(items) = self else {
            return None;
        };
        let items = items.borrow();
        items
            .iter()
            .rev()
            .find(|(k, _)| matches!(k, Object::Str(s) if s == key))
            .map(|(_, v)| v.clone())
    }
}

/// Runs the restricted unpickler over one pickle and returns its result.
pub(crate) fn unpickle(pickle: &[u8]) -> Result<Object> {
    Unpickler {
        pickle,
        pos: 0,
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
    }
    .run()
}

struct Unpickler<'a> {
    pickle: &'a [u8],
    pos: usize,
    stack: Vec<Object>,
    /// Stack heights at each MARK opcode still open.
    marks: Vec<usize>,
    memo: HashMap<u32, Object>,
}

impl<'a> Unpickler<'a> {
    fn run(mut self) -> Result<Object> {
        loop {
            let at = self.pos;
            let opcode = self.read_u8()?;
            match opcode {
                b'.' => return self.pop(), // STOP
                0x80 => {
                    // PROTO
                    let protocol = self.read_u8()?;
                    ensure!(protocol <= 5, "unsupported pickle protocol {protocol}");
                }
                0x95 => {
                    // FRAME: only a length hint for buffered readers
                    self.read_bytes(8)?;
                }
                b'(' => self.marks.push(self.stack.len()), // MARK
                b'0' => {
                    // POP
                    self.pop()?;
                }
                b'1' => {
                    // POP_MARK
                    self.pop_mark()?;
                }
                b'2' => {
                    // DUP
                    let top = self.pop()?;
                    self.stack.push(top.clone());
                    self.stack.push(top);
                }
                b'N' => self.stack.push(Object::None),
                0x88 => self.stack.push(Object::Bool(true)),
                0x89 => self.stack.push(Object::Bool(false)),
                b'J' => {
                    let bytes = self.read_array::<4>()?;
                    self.stack
                        .push(Object::Int(i32::from_le_bytes(bytes).into()));
                }
                b'K' => {
                    let byte = self.read_u8()?;
                    self.stack.push(Object::Int(byte.into()));
                }
                b'M' => {
                    let bytes = self.read_array::<2>()?;
                    self.stack
                        .push(Object::Int(u16::from_le_bytes(bytes).into()));
                }
                0x8a => {
                    // LONG1
                    let len = self.read_u8()?.into();
                    let value = self.read_long(len)?;
                    self.stack.push(Object::Int(value));
                }
                0x8b => {
                    // LONG4
                    let len = self.read_len(4)?;
                    let value = self.read_long(len)?;
                    self.stack.push(Object::Int(value));
                }
                b'G' => {
                    // BINFLOAT: big-endian double
                    let bytes = self.read_array::<8>()?;
                    self.stack.push(Object::Float(f64::from_be_bytes(bytes)));
                }
                b'X' | 0x8c | 0x8d => {
                    // BINUNICODE, SHORT_BINUNICODE, BINUNICODE8
                    let text = self.read_counted(opcode_len_width(opcode))?;
                    let text = std::str::from_utf8(text)
                        .map_err(|_| anyhow!("pickle string at byte {at} is not UTF-8"))?;
                    self.stack.push(Object::Str(text.to_owned()));
                }
                b'B' | b'C' | 0x8e | 0x96 => {
                    // BINBYTES, SHORT_BINBYTES, BINBYTES8, BYTEARRAY8
                    let bytes = self.read_counted(opcode_len_width(opcode))?;
                    self.stack.push(Object::Bytes(bytes.to_vec()));
                }
                b')' => self.stack.push(Object::Tuple(Rc::default())),
                b']' => self.stack.push(Object::List(Rc::default())),
                b'}' => self.stack.push(Object::Dict(Rc::default())),
                b't' => {
                    let items = self.pop_mark()?;
                    self.stack.push(Object::Tuple(Rc::new(items)));
                }
                0x85..=0x87 => {
                    // TUPLE1, TUPLE2, TUPLE3
                    let len = usize::from(opcode - 0x84);
                    ensure!(
                        self.stack.len() >= len,
                        "pickle stack underflow at byte {at}"
                    );
                    let items = self.stack.split_off(self.stack.len() - len);
                    self.stack.push(Object::Tuple(Rc::new(items)));
                }
                b'l' => {
                    let items = self.pop_mark()?;
                    self.stack.push(Object::List(Rc::new(RefCell::new(items))));
                }
                b'd' => {
                    let items = self.pop_mark()?;
                    let pairs = into_pairs(items)?;
                    self.stack.push(Object::Dict(Rc::new(RefCell::new(pairs))));
                }
                b'a' => {
                    let item = self.pop()?;
                    self.top_list()?.borrow_mut().push(item);
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    self.top_list()?.borrow_mut().extend(items);
                }
                b's' => {
                    let value = self.pop()?;
                    let key = self.pop()?;
                    self.top_dict()?.borrow_mut().push((key, value));
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    let pairs = into_pairs(items)?;
                    self.top_dict()?.borrow_mut().extend(pairs);
                }
                b'q' => {
                    let index = self.read_u8()?.into();
                    self.memoize(index)?;
                }
                b'r' => {
                    let index = u32::from_le_bytes(self.read_array::<4>()?);
                    self.memoize(index)?;
                }
                0x94 => {
                    // MEMOIZE
                    let index = u32::try_from(self.memo.len())?;
                    self.memoize(index)?;
                }
                b'h' => {
                    let index = self.read_u8()?.into();
                    self.push_memo(index)?;
                }
                b'j' => {
                    let index = u32::from_le_bytes(self.read_array::<4>()?);
                    self.push_memo(index)?;
                }
                b'c' => {
                    // GLOBAL: "module\nname\n"
                    let module = self.read_line()?.to_owned();
                    let name = self.read_line()?.to_owned();
                    self.push_global(&module, &name)?;
                }
                0x93 => {
                    // STACK_GLOBAL
                    let name = self.pop()?;
                    let module = self.pop()?;
                    let (Object::Str(module), Object::Str(name)) = (module, name) else {
                        bail!("STACK_GLOBAL at byte {at} needs two strings");
                    };
                    self.push_global(&module, &name)?;
                }
                b'Q' => {
                    // BINPERSID: torch.save's reference to a storage
                    let pid = self.pop()?;
                    self.stack.push(Object::Storage(storage_from_pid(&pid)?));
                }
                b'R' | 0x81 => {
                    // REDUCE: callable(*args); NEWOBJ: cls.__new__(cls, *args)
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    let Object::Tuple(args) = args else {
                        bail!(
                            "call at byte {at} has {} arguments, not a tuple",
                            args.type_name()
                        );
                    };
                    let Object::Global(global) = callable else {
                        bail!("call at byte {at} calls a {}", callable.type_name());
                    };
                    self.stack.push(call(global, &args)?);
                }
                b'b' => {
                    // BUILD: sets attributes, such as the `_metadata` that
                    // `state_dict()` hangs on its OrderedDict; weights do not
                    // need them.
                    self.pop()?;
                    let target = self.stack.last().map(Object::type_name);
                    ensure!(
                        matches!(target, Some("dict" | "tensor")),
                        "pickle at byte {at} sets attributes of a {}, which a weights file does not do",
                        target.unwrap_or("empty stack")
                    );
                }
                other => bail!(
                    "unsupported pickle opcode 0x{other:02x} at byte {at}: \
                     only tensors and plain containers are allowed"
                ),
            }
        }
    }

    fn read_u8(&mut self) -> Result<u8> {
        Ok(self.read_bytes(1)?[0])
    }

    fn read_array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let bytes = self.read_bytes(N)?;
        Ok(bytes
            .try_into()
            .expect("read_bytes returns exactly N bytes"))
    }

    fn read_bytes(&mut self, len: usize) -> Result<&'a [u8]> {
        let end = self
            .pos
            .checked_add(len)
            .filter(|&end| end <= self.pickle.len())
            .ok_or_else(|| anyhow!("pickle is truncated at byte {}", self.pos))?;
        let bytes = &self.pickle[self.pos..end];
        self.pos = end;
        Ok(bytes)
    }

    /// Reads a little-endian length of `width` bytes.
    fn read_len(&mut self, width: usize) -> Result<usize> {
        let mut bytes = [0u8; 8];
        bytes[..width].copy_from_slice(self.read_bytes(width)?);
        Ok(usize::try_from(u64::from_le_bytes(bytes))?)
    }

    /// Reads a length of `width` bytes and then that many bytes.
    fn read_counted(&mut self, width: usize) -> Result<&'a [u8]> {
        let len = self.read_len(width)?;
        self.read_bytes(len)
    }

    /// Reads a little-endian two's-complement integer of `len` bytes.
    fn read_long(&mut self, len: usize) -> Result<i64> {
        ensure!(
            len <= 8,
            "pickled integer of {len} bytes does not fit in 64 bits"
        );
        let bytes = self.read_bytes(len)?;
        let negative = bytes.last().is_some_and(|b| b & 0x80 != 0);
        let mut full = if negative { [0xff; 8] } else { [0; 8] };
        full[..len].copy_from_slice(bytes);
        Ok(i64::from_le_bytes(full))
    }

    fn read_line(&mut self) -> Result<&'a str> {
        let rest = &self.pickle[self.pos..];
        let len = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or_else(|| anyhow!("pickle is truncated at byte {}", self.pos))?;
        let line = std::str::from_utf8(&rest[..len])
            .map_err(|_| anyhow!("pickled global name at byte {} is not UTF-8", self.pos))?;
        self.pos += len + 1;
        Ok(line)
    }

    fn pop(&mut self) -> Result<Object> {
        let floor = self.marks.last().copied().unwrap_or(0);
        ensure!(
            self.stack.len() > floor,
            "pickle stack underflow at byte {}",
            self.pos - 1
        );
        Ok(self.stack.pop().expect("stack is above the floor"))
    }

    fn pop_mark(&mut self) -> Result<Vec<Object>> {
        let mark = self
            .marks
            .pop()
            .ok_or_else(|| anyhow!("pickle has no MARK before byte {}", self.pos - 1))?;
        Ok(self.stack.split_off(mark))
    }

    fn top_list(&self) -> Result<SharedList> {
        match self.stack.last() {
            Some(Object::List(items)) => Ok(items.clone()),
            other => bail!(
                "pickle appends to a {} at byte {}",
                other.map_or("empty stack", Object::type_name),
                self.pos - 1
            ),
        }
    }

    fn top_dict(&self) -> Result<SharedDict> {
        match self.stack.last() {
            Some(Object::Dict(items)) => Ok(items.clone()),
            other => bail!(
                "pickle sets an item of a {} at byte {}",
                other.map_or("empty stack", Object::type_name),
                self.pos - 1
            ),
        }
    }

    fn memoize(&mut self, index: u32) -> Result<()> {
        let top = self
            .stack
            .last()
            .ok_or_else(|| anyhow!("pickle memoizes an empty stack at byte {}", self.pos))?;
        self.memo.insert(index, top.clone());
        Ok(())
    }

    fn push_memo(&mut self, index: u32) -> Result<()> {
        let value = self
            .memo
            .get(&index)
            .ok_or_else(|| anyhow!("pickle refers to memo entry {index}, which was never set"))?;
        self.stack.push(value.clone());
        Ok(())
    }

    fn push_global(&mut self, module: &str, name: &str) -> Result<()> {
        let global = Global::from_name(module, name).ok_or_else(|| {
            anyhow!(
                "refusing to load pickled global `{module}.{name}`: \
                 only tensors and plain containers are allowed"
            )
        })?;
        self.stack.push(Object::Global(global));
        Ok(())
    }
}

/// How many bytes hold the length after a counted string/bytes opcode.
fn opcode_len_width(opcode: u8) -> usize {
    match opcode {
        0x8c | b'C' => 1,
        0x8d | 0x8e | 0x96 => 8,
        _ => 4,
    }
}

fn into_pairs(items: Vec<Object>) -> Result<Vec<(Object, Object)>> {
    ensure!(
        items.len() % 2 == 0,
        "pickled dict has a key without a value"
    );
    let mut items = items.into_iter();
    let mut pairs = Vec::new();
    while let (Some(key), Some(value)) = (items.next(), items.next()) {
        pairs.push((key, value));
    }
    Ok(pairs)
}

/// Interprets torch.save's persistent id of a storage:
/// `("storage", <storage class>, key, location, numel)`.
fn storage_from_pid(pid: &Object) -> Result<StorageRef> {
    let Object::Tuple(fields) = pid else {
        bail!(
            "persistent id is a {}, not a storage record",
            pid.type_name()
        );
    };
    match fields.as_slice() {
        [Object::Str(tag), Object::Global(Global::StorageType(kind)), Object::Str(key), Object::Str(_location), Object::Int(numel)]
            if tag == "storage" && *numel >= 0 =>
        {
            Ok(StorageRef {
                key: key.clone(),
                kind: *kind,
                numel: *numel,
            })
        }
        _ => {
            bail!("persistent id is not a storage record (\"storage\", type, key, location, numel)")
        }
    }
}

/// Applies one of the allowed globals to its arguments.
fn call(global: Global, args: &[Object]) -> Result<Object> {
    match (global, args) {
        (
            Global::RebuildTensor,
            [Object::Storage(storage), Object::Int(offset), size, stride, _requires_grad, _hooks, ..],
        ) if args.len() <= 7 => Ok(Object::Tensor(Rc::new(tensor_record(
            storage,
            *offset,
            int_list(size)?,
            int_list(stride)?,
        )?))),
        (Global::RebuildParameter, [tensor @ Object::Tensor(_), _requires_grad, _hooks])
        | (
            Global::RebuildParameterWithState,
            [tensor @ Object::Tensor(_), _requires_grad, _hooks, _],
        ) => Ok(tensor.clone()),
        (Global::OrderedDict, []) => Ok(Object::Dict(Rc::default())),
        (Global::EmptyBytes, []) => Ok(Object::Bytes(Vec::new())),
        (Global::Latin1Encode, [Object::Str(text), Object::Str(encoding)])
            if encoding == "latin1" =>
        {
            let bytes = text
                .chars()
                .map(|c| u8::try_from(c).map_err(|_| anyhow!("latin1 bytes hold `{c}`")))
                .collect::<Result<Vec<u8>>>()?;
            Ok(Object::Bytes(bytes))
        }
        _ => {
            let arg_types: Vec<_> = args.iter().map(Object::type_name).collect();
            bail!("unexpected call {global:?}({})", arg_types.join(", "))
        }
    }
}

fn int_list(object: &Object) -> Result<Vec<i64>> {
    let items = match object {
        Object::Tuple(items) => items.as_slice().to_vec(),
        Object::List(items) => items.borrow().clone(),
        other => bail!(
            "expected a tuple of integers, found a {}",
            other.type_name()
        ),
    };
    items
        .iter()
        .map(|item| match item {
            Object::Int(value) => Ok(*value),
            other => bail!("expected an integer, found a {}", other.type_name()),
        })
        .collect()
}

/// Checks that a strided view lies inside its storage.
fn tensor_record(
    storage: &StorageRef,
    offset: i64,
    size: Vec<i64>,
    stride: Vec<i64>,
) -> Result<TensorRecord> {
    ensure!(
        size.len() == stride.len(),
        "tensor has {} sizes but {} strides",
        size.len(),
        stride.len()
    );
    ensure!(
        offset >= 0 && size.iter().chain(&stride).all(|&n| n >= 0),
        "tensor has a negative size, stride or storage offset"
    );
    if size.iter().all(|&n| n > 0) {
        let last_element = size
            .iter()
            .zip(&stride)
            .try_fold(offset, |acc, (&n, &s)| {
                acc.checked_add((n - 1).checked_mul(s)?)
            })
            .ok_or_else(|| anyhow!("tensor view overflows 64-bit indexing"))?;
        ensure!(
            last_element < storage.numel,
            "tensor view reaches element {last_element} of storage `{}`, which has {} elements",
            storage.key,
            storage.numel
        );
    }
    Ok(TensorRecord {
        storage: storage.clone(),
        offset,
        size,
        stride,
    })
}
