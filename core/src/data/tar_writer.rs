//! Writing webdataset shards: a tar archive of regular files in the POSIX
//! ustar format (as Python's `tarfile` writes with `USTAR_FORMAT`), so that
//! Python's `tarfile`, webdataset and [`super::tar_samples`] read it. Members
//! carry mode 0644, owner 0 and modification time 0, so the same members
//! always give the same bytes.

use std::io::{self, Write};

const BLOCK: usize = 512;
/// The longest member name a ustar header holds without its prefix field.
const MAX_NAME_BYTES: usize = 100;
/// The largest size the header's 11 octal digits hold.
const MAX_MEMBER_BYTES: u64 = 0o77777777777;

/// Writes members one after another; [`TarWriter::finish`] ends the archive.
pub struct TarWriter<W: Write> {
    out: W,
}

impl<W: Write> TarWriter<W> {
    pub fn new(out: W) -> Self {
        TarWriter { out }
    }

    /// Appends a regular file `name` (at most 100 bytes, `/` between
    /// folders) holding `data`.
    pub fn append(&mut self, name: &str, data: &[u8]) -> io::Result<()> {
        let header = member_header(name, data.len() as u64)?;
        self.out.write_all(&header)?;
        self.out.write_all(data)?;
        let padding = (BLOCK - data.len() % BLOCK) % BLOCK;
        self.out.write_all(&[0; BLOCK][..padding])
    }

    /// Writes the end-of-archive marker (two zero blocks) and returns the
    /// writer, flushed.
    pub fn finish(mut self) -> io::Result<W> {
        self.out.write_all(&[0; 2 * BLOCK])?;
        self.out.flush()?;
        Ok(self.out)
    }
}

fn member_header(name: &str, size: u64) -> io::Result<[u8; BLOCK]> {
    if name.is_empty() || name.len() > MAX_NAME_BYTES || name.contains('\0') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("tar member name {name:?} must be 1 to {MAX_NAME_BYTES} bytes without NUL"),
        ));
    }
    if size > MAX_MEMBER_BYTES {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("tar member {name:?} is too large for a ustar header ({size} bytes)"),
        ));
    }
    let mut header = [0u8; BLOCK];
    header[..name.len()].copy_from_slice(name.as_bytes());
    put_octal(&mut header[100..108], 0o644); // mode
    put_octal(&mut header[108..116], 0); // uid
    put_octal(&mut header[116..124], 0); // gid
    put_octal(&mut header[124..136], size);
    put_octal(&mut header[136..148], 0); // mtime
    header[156] = b'0'; // regular file
    header[257..263].copy_from_slice(b"ustar\0");
    header[263..265].copy_from_slice(b"00");
    put_octal(&mut header[329..337], 0); // devmajor
    put_octal(&mut header[337..345], 0); // devminor
                                         // The checksum sums the header with its own field read as spaces, and is
                                         // written as six octal digits, a NUL and a space.
    header[148..156].fill(b' ');
    let checksum: u32 = header.iter().map(|&b| u32::from(b)).sum();
    put_octal(&mut header[148..155], u64::from(checksum));
    Ok(header)
}

/// Writes `value` as zero-padded octal digits filling `field` but its last
/// byte, which is NUL.
fn put_octal(field: &mut [u8], value: u64) {
    let digits = field.len() - 1;
    let text = format!("{value:0digits$o}");
    field[..digits].copy_from_slice(text.as_bytes());
    field[digits] = 0;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::tar_samples::{TarMember, TarMembers};

    #[test]
    fn members_read_back_in_order() {
        let mut writer = TarWriter::new(Vec::new());
        writer.append("000001.png", &[7; 600]).unwrap();
        writer.append("000001.txt", b"a red circle").unwrap();
        writer.append("dir/empty", b"").unwrap();
        let bytes = writer.finish().unwrap();
        assert_eq!(bytes.len() % BLOCK, 0);
        let mut reader = TarMembers::new(bytes.as_slice());
        let mut members: Vec<TarMember> = Vec::new();
        while let Some(member) = reader.next_member().unwrap() {
            members.push(member);
        }
        let names: Vec<&str> = members.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["000001.png", "000001.txt", "dir/empty"]);
        assert_eq!(members[0].data, vec![7; 600]);
        assert_eq!(members[1].data, b"a red circle");
    }

    #[test]
    fn long_or_empty_names_are_refused() {
        let mut writer = TarWriter::new(Vec::new());
        assert!(writer.append(&"x".repeat(101), b"").is_err());
        assert!(writer.append("", b"").is_err());
    }
}
