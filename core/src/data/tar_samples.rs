//! Reading webdataset shards: streaming the members of a tar archive (POSIX
//! ustar, GNU long names and pax headers, as Python's `tarfile` writes them)
//! and grouping consecutive members into samples by key, as webdataset does
//! for OpenCLIP.
//!
//! A member `dir/000123.jpg` has key `dir/000123` (the path up to the first
//! dot of the basename) and extension `jpg` (the rest, lower-cased). A new
//! sample starts when the key changes or an extension repeats. A sample keeps
//! its image from the first of `jpg`, `png`, `jpeg`, `webp` and its caption
//! from `txt`; samples lacking either are skipped, as is everything past the
//! damage in a truncated or corrupt tar. Members named like `__len__` (meta
//! files) and anything that is not a regular file are ignored, as webdataset
//! ignores them. Unlike webdataset, a sample never spans two shards, and a
//! hidden basename (`dir/.x.jpg`) counts as a member without a key.

use std::collections::VecDeque;
use std::io::{self, Read};
use std::sync::Arc;

use super::shard_stream::ShardOpener;
use super::{ImageData, Sample, Skip, SkipKind, SourceItem};

/// Image extensions, in the order OpenCLIP prefers them when a sample has several.
pub const IMAGE_EXTENSIONS: [&str; 4] = ["jpg", "png", "jpeg", "webp"];
/// The caption's extension.
pub const CAPTION_EXTENSION: &str = "txt";

const BLOCK: usize = 512;
/// Larger members are taken for corruption rather than allocated.
const MAX_MEMBER_BYTES: u64 = 1 << 30;

/// A regular file in a tar archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TarMember {
    pub name: String,
    pub data: Vec<u8>,
}

/// Streams the regular-file members of a tar archive, without seeking.
pub struct TarMembers<R> {
    reader: R,
    /// Padding after the previous member's data, skipped before the next header.
    pending_padding: u64,
    /// The name a GNU long-name (`L`) or pax header gave the next member.
    next_name: Option<String>,
    /// The size a pax header gave the next member.
    next_size: Option<u64>,
    /// The name of the last header read, for error messages.
    last_name: Option<String>,
}

impl<R: Read> TarMembers<R> {
    pub fn new(reader: R) -> Self {
        TarMembers {
            reader,
            pending_padding: 0,
            next_name: None,
            next_size: None,
            last_name: None,
        }
    }

    /// The next regular file, `None` at the end of the archive, or an error
    /// describing the damage (after which the archive cannot be resumed).
    pub fn next_member(&mut self) -> Result<Option<TarMember>, String> {
        loop {
            self.skip(self.pending_padding, "the padding after a member")?;
            self.pending_padding = 0;
            let Some(header) = self.read_header()? else {
                return Ok(None);
            };
            let size = match self.next_size.take() {
                Some(size) => size,
                None => header_number(&header[124..136]).ok_or("a header has a corrupt size")?,
            };
            let name = self
                .next_name
                .take()
                .unwrap_or_else(|| header_name(&header));
            self.last_name = Some(name.clone());
            let padded = size.div_ceil(BLOCK as u64) * BLOCK as u64;
            match header[156] {
                b'0' | b'7' => {}
                b'\0' if !name.ends_with('/') => {}
                b'L' => {
                    let data = self.read_data(size)?;
                    self.pending_padding = padded - size;
                    self.next_name = Some(until_nul(&data));
                    continue;
                }
                b'x' => {
                    let data = self.read_data(size)?;
                    self.pending_padding = padded - size;
                    self.apply_pax_records(&data)?;
                    continue;
                }
                // Directories, links and devices carry no data.
                b'\0' | b'1'..=b'6' => continue,
                // Global pax headers, GNU long link names, sparse files and
                // unknown types: their data is skipped.
                _ => {
                    self.skip(padded, "the data of a skipped member")?;
                    continue;
                }
            }
            let data = self.read_data(size)?;
            self.pending_padding = padded - size;
            if is_meta_member(&name) {
                continue;
            }
            return Ok(Some(TarMember { name, data }));
        }
    }

    /// The name of the last member header read, for error messages.
    pub fn last_name(&self) -> Option<&str> {
        self.last_name.as_deref()
    }

    /// The next header block; `None` at the end-of-archive marker or at a
    /// clean end of the stream.
    fn read_header(&mut self) -> Result<Option<[u8; BLOCK]>, String> {
        let mut header = [0u8; BLOCK];
        let filled = read_fully(&mut self.reader, &mut header)
            .map_err(|e| format!("reading a header: {e}"))?;
        if filled == 0 {
            return Ok(None);
        }
        if filled < BLOCK {
            return Err(format!(
                "the archive ends inside a header ({filled} of {BLOCK} bytes)"
            ));
        }
        if header.iter().all(|&b| b == 0) {
            return Ok(None);
        }
        if !checksum_matches(&header) {
            return Err("a header is corrupt (its checksum does not match)".to_owned());
        }
        Ok(Some(header))
    }

    fn read_data(&mut self, size: u64) -> Result<Vec<u8>, String> {
        if size > MAX_MEMBER_BYTES {
            return Err(format!(
                "a member claims {size} bytes, over the {MAX_MEMBER_BYTES}-byte limit"
            ));
        }
        let mut data = Vec::with_capacity(size as usize);
        let read = (&mut self.reader)
            .take(size)
            .read_to_end(&mut data)
            .map_err(|e| format!("reading a member: {e}"))?;
        if (read as u64) < size {
            return Err(format!(
                "the archive ends inside a member ({read} of {size} bytes)"
            ));
        }
        Ok(data)
    }

    fn skip(&mut self, bytes: u64, what: &str) -> Result<(), String> {
        if bytes == 0 {
            return Ok(());
        }
        let skipped = io::copy(&mut (&mut self.reader).take(bytes), &mut io::sink())
            .map_err(|e| format!("reading {what}: {e}"))?;
        if skipped < bytes {
            return Err(format!("the archive ends inside {what}"));
        }
        Ok(())
    }

    /// Reads `path` and `size` from pax records (`"<length> <key>=<value>\n"`).
    fn apply_pax_records(&mut self, records: &[u8]) -> Result<(), String> {
        let mut rest = records;
        while !rest.is_empty() && rest[0] != 0 {
            let space = rest
                .iter()
                .position(|&b| b == b' ')
                .ok_or("a pax header is corrupt")?;
            let length: usize = std::str::from_utf8(&rest[..space])
                .ok()
                .and_then(|s| s.parse().ok())
                .filter(|&n| n > space && n <= rest.len())
                .ok_or("a pax header has a corrupt record length")?;
            let record = &rest[space + 1..length];
            let record = record.strip_suffix(b"\n").unwrap_or(record);
            if let Some(eq) = record.iter().position(|&b| b == b'=') {
                let value = String::from_utf8_lossy(&record[eq + 1..]).into_owned();
                match &record[..eq] {
                    b"path" => self.next_name = Some(value),
                    b"size" => {
                        self.next_size = Some(
                            value
                                .parse()
                                .map_err(|_| "a pax header has a corrupt size")?,
                        )
                    }
                    _ => {}
                }
            }
            rest = &rest[length..];
        }
        Ok(())
    }
}

/// Reads until `buf` is full or the stream ends; returns the bytes read.
fn read_fully(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

fn until_nul(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

/// The member name of a ustar header: `prefix/name` when the POSIX prefix
/// field is used, else the name field.
fn header_name(header: &[u8; BLOCK]) -> String {
    let name = until_nul(&header[0..100]);
    let is_posix_ustar = &header[257..263] == b"ustar\0";
    let prefix = if is_posix_ustar {
        until_nul(&header[345..500])
    } else {
        String::new()
    };
    if prefix.is_empty() {
        name
    } else {
        format!("{prefix}/{name}")
    }
}

/// A numeric header field: octal text, or GNU base-256 for large values.
fn header_number(field: &[u8]) -> Option<u64> {
    match field.first() {
        Some(0x80) => field[1..]
            .iter()
            .try_fold(0u64, |n, &b| n.checked_mul(256)?.checked_add(b as u64)),
        Some(0xff) => None,
        _ => {
            let text = until_nul(field);
            let text = text.trim_matches(|c: char| c == ' ' || c == '\0');
            if text.is_empty() {
                Some(0)
            } else {
                u64::from_str_radix(text, 8).ok()
            }
        }
    }
}

/// Whether the header's checksum field equals the sum of its bytes (with the
/// field itself counted as spaces), summed as unsigned or as signed bytes.
fn checksum_matches(header: &[u8; BLOCK]) -> bool {
    let Some(stored) = header_number(&header[148..156]) else {
        return false;
    };
    let field = 148..156;
    let (mut unsigned, mut signed) = (0i64, 0i64);
    for (i, &b) in header.iter().enumerate() {
        let b = if field.contains(&i) { b' ' } else { b };
        unsigned += b as i64;
        signed += b as i8 as i64;
    }
    stored as i64 == unsigned || stored as i64 == signed
}

/// Meta members webdataset skips: `__name__` at the top level, or anything
/// under a `__name__/` folder.
fn is_meta_member(name: &str) -> bool {
    let first = name.split('/').next().unwrap_or(name);
    let meta_like = |s: &str| s.starts_with("__") && s.ends_with("__");
    if !name.contains('/') {
        meta_like(name)
    } else {
        first.len() >= 4 && meta_like(first)
    }
}

/// Splits a member name into its sample key and lower-cased extension; `None`
/// when the basename has no dot or starts with one.
pub fn split_member_name(name: &str) -> Option<(&str, String)> {
    let basename_start = name.rfind('/').map_or(0, |slash| slash + 1);
    let dot = basename_start + name[basename_start..].find('.')?;
    if dot == basename_start {
        return None;
    }
    Some((&name[..dot], name[dot + 1..].to_lowercase()))
}

/// The members of one sample as they are grouped.
struct PartialSample {
    key: String,
    members: Vec<(String, Vec<u8>)>,
}

impl PartialSample {
    fn has(&self, extension: &str) -> bool {
        self.members.iter().any(|(ext, _)| ext == extension)
    }

    fn take(&mut self, extension: &str) -> Option<Vec<u8>> {
        let index = self.members.iter().position(|(ext, _)| ext == extension)?;
        Some(self.members.swap_remove(index).1)
    }

    /// The finished sample, or the reason it is skipped.
    fn finish(mut self, origin: &str) -> SourceItem {
        let skip = |kind, detail: String, key: String| {
            SourceItem::Skipped(Skip {
                kind,
                origin: origin.to_owned(),
                key: Some(key),
                detail,
            })
        };
        let present = || {
            let extensions: Vec<&str> = self.members.iter().map(|(e, _)| e.as_str()).collect();
            format!("its members are [{}]", extensions.join(", "))
        };
        let Some(extension) = IMAGE_EXTENSIONS.into_iter().find(|e| self.has(e)) else {
            let detail = format!("no jpg/png/jpeg/webp member; {}", present());
            return skip(SkipKind::MissingImage, detail, self.key);
        };
        if !self.has(CAPTION_EXTENSION) {
            let detail = format!("no txt member; {}", present());
            return skip(SkipKind::MissingCaption, detail, self.key);
        }
        let caption = self.take(CAPTION_EXTENSION).unwrap_or_default();
        let bytes = self.take(extension).unwrap_or_default();
        match String::from_utf8(caption) {
            Ok(caption) => SourceItem::Sample(Sample {
                key: self.key,
                origin: origin.to_owned(),
                image: ImageData::Encoded {
                    bytes,
                    extension: extension.to_owned(),
                },
                caption,
            }),
            Err(e) => skip(
                SkipKind::CaptionNotUtf8,
                format!("the txt member is not UTF-8: {e}"),
                self.key,
            ),
        }
    }
}

/// The samples of one shard, and records of what it skipped.
pub struct TarSamples<R> {
    members: TarMembers<R>,
    origin: String,
    current: Option<PartialSample>,
    ready: VecDeque<SourceItem>,
    finished: bool,
}

impl<R: Read> TarSamples<R> {
    /// Groups the members of the tar stream `reader`; `origin` (the shard
    /// URL) is recorded in every sample and skip.
    pub fn new(reader: R, origin: impl Into<String>) -> Self {
        TarSamples {
            members: TarMembers::new(reader),
            origin: origin.into(),
            current: None,
            ready: VecDeque::new(),
            finished: false,
        }
    }

    fn finish_current(&mut self) {
        if let Some(sample) = self.current.take() {
            self.ready.push_back(sample.finish(&self.origin));
        }
    }

    fn add_member(&mut self, member: TarMember) {
        let Some((key, extension)) = split_member_name(&member.name) else {
            self.ready.push_back(SourceItem::Skipped(Skip {
                kind: SkipKind::MemberWithoutKey,
                origin: self.origin.clone(),
                key: Some(member.name.clone()),
                detail: "the member's basename has no extension, so it belongs to no sample"
                    .to_owned(),
            }));
            return;
        };
        let starts_new = match &self.current {
            Some(current) => current.key != key || current.has(&extension),
            None => true,
        };
        if starts_new {
            self.finish_current();
            self.current = Some(PartialSample {
                key: key.to_owned(),
                members: Vec::new(),
            });
        }
        if let Some(current) = &mut self.current {
            current.members.push((extension, member.data));
        }
    }
}

impl<R: Read> Iterator for TarSamples<R> {
    type Item = SourceItem;

    fn next(&mut self) -> Option<SourceItem> {
        loop {
            if let Some(item) = self.ready.pop_front() {
                return Some(item);
            }
            if self.finished {
                return None;
            }
            match self.members.next_member() {
                Ok(Some(member)) => self.add_member(member),
                Ok(None) => {
                    self.finished = true;
                    self.finish_current();
                }
                Err(damage) => {
                    self.finished = true;
                    self.finish_current();
                    self.ready.push_back(SourceItem::Skipped(Skip {
                        kind: SkipKind::BadTar,
                        origin: self.origin.clone(),
                        key: self.members.last_name().map(str::to_owned),
                        detail: format!("{damage}; the rest of the shard is skipped"),
                    }));
                }
            }
        }
    }
}

/// The samples of a sequence of shards, opened one after the other; a shard
/// that cannot be opened is recorded as skipped and the next one follows.
pub struct ShardSamples<I> {
    shards: I,
    opener: Arc<ShardOpener>,
    current: Option<TarSamples<Box<dyn Read + Send>>>,
}

impl<I: Iterator<Item = String>> ShardSamples<I> {
    pub fn new(shards: I, opener: Arc<ShardOpener>) -> Self {
        ShardSamples {
            shards,
            opener,
            current: None,
        }
    }
}

impl<I: Iterator<Item = String>> Iterator for ShardSamples<I> {
    type Item = SourceItem;

    fn next(&mut self) -> Option<SourceItem> {
        loop {
            if let Some(item) = self.current.as_mut().and_then(Iterator::next) {
                return Some(item);
            }
            self.current = None;
            let shard = self.shards.next()?;
            match self.opener.open(&shard) {
                Ok(reader) => self.current = Some(TarSamples::new(reader, shard)),
                Err(error) => {
                    return Some(SourceItem::Skipped(Skip {
                        kind: SkipKind::UnreadableShard,
                        origin: shard,
                        key: None,
                        detail: format!("{error:#}"),
                    }))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_names() {
        assert_eq!(
            split_member_name("a/b.c/000.seg.JPG"),
            Some(("a/b.c/000", "seg.jpg".to_owned()))
        );
        assert_eq!(split_member_name("README"), None);
        assert_eq!(split_member_name("dir/.hidden.jpg"), None);
        assert!(is_meta_member("__len__"));
        assert!(is_meta_member("__meta__/x.json"));
        assert!(!is_meta_member("a/__len__"));
        assert!(!is_meta_member("__x.jpg"));
    }
}
