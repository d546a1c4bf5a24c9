//! The checks a GGUF header gets around Candle's reader, which trusts two of its numbers:
//! - [`prescan`], before `Content::read`: the header is walked once without building anything
//!   (strings and arrays are skipped by their lengths, each held to the bytes left in the file,
//!   arrays nested at most 64 deep), and `general.alignment` must be a power of two, as GGUF
//!   requires: Candle divides by it, so an alignment of 0 would panic;
//! - [`check_tensors`], after it: every tensor's element count is computed without overflow
//!   (Candle multiplies the dimensions unchecked), fits whole blocks of its type, and its bytes
//!   lie inside the file, before anything is read or allocated for it.

use std::io::{Read, Seek, SeekFrom};

use candle_core::quantized::gguf_file::Content;
use candle_core::{bail, Result};

/// The deepest nesting of arrays walked (Candle's own limit).
const MAX_DEPTH: usize = 64;

/// Walks the header of the GGUF file `reader` (from its start) and checks the alignment; see
/// the module docs. `source` names the file in errors.
pub fn prescan<R: Read + Seek>(reader: &mut R, source: &str) -> Result<()> {
    let size = reader.seek(SeekFrom::End(0))?;
    reader.seek(SeekFrom::Start(0))?;
    let mut r = Scan {
        reader,
        size,
        source,
    };
    let magic = r.u32()?;
    if magic != 0x4655_4747 {
        bail!("{source} is not a GGUF file (its first bytes are not \"GGUF\")")
    }
    let version = r.u32()?;
    if !(2..=3).contains(&version) {
        bail!("{source}: GGUF version {version} is not supported (2 and 3 are)")
    }
    let _tensors = r.u64()?;
    let entries = r.u64()?;
    for _ in 0..entries {
        let key = r.string()?;
        let kind = r.u32()?;
        if key == "general.alignment" {
            let alignment = match kind {
                0 | 1 => u64::from(r.bytes::<1>()?[0]),
                2 | 3 => u64::from(u16::from_le_bytes(r.bytes()?)),
                4 | 5 => u64::from(u32::from_le_bytes(r.bytes()?)),
                10 | 11 => u64::from_le_bytes(r.bytes()?),
                _ => bail!("{source}: general.alignment is not an integer (type {kind})"),
            };
            if !alignment.is_power_of_two() {
                bail!("{source}: general.alignment is {alignment}, not a power of two")
            }
        } else {
            r.skip_value(kind, 0)?;
        }
    }
    reader.seek(SeekFrom::Start(0))?;
    Ok(())
}

/// Checks every tensor of `content` (read from a file of `file_size` bytes): element count
/// without overflow, whole blocks of its type, its bytes inside the file.
pub fn check_tensors(content: &Content, file_size: u64, source: &str) -> Result<()> {
    for (name, info) in &content.tensor_infos {
        let dims = info.shape.dims();
        let Some(elems) = dims.iter().try_fold(1usize, |n, &d| n.checked_mul(d)) else {
            bail!("{source}: tensor {name} has dimensions {dims:?}, more elements than can be counted")
        };
        let (block, block_bytes) = (info.ggml_dtype.block_size(), info.ggml_dtype.type_size());
        if !elems.is_multiple_of(block) {
            bail!(
                "{source}: tensor {name} has {elems} elements, not whole blocks of {block} of its \
                 type {:?}",
                info.ggml_dtype
            )
        }
        let bytes = ((elems / block) as u64).checked_mul(block_bytes as u64);
        let start = content.tensor_data_offset.checked_add(info.offset);
        match start.zip(bytes).and_then(|(s, b)| s.checked_add(b)) {
            Some(end) if end <= file_size => {}
            _ => bail!(
                "{source}: tensor {name} ({dims:?}, {:?}, at offset {} of the data) runs past the \
                 end of the file ({file_size} bytes): the file is truncated or corrupt",
                info.ggml_dtype,
                info.offset
            ),
        }
    }
    Ok(())
}

/// A bounded walk over a header.
struct Scan<'a, R> {
    reader: &'a mut R,
    size: u64,
    source: &'a str,
}

impl<R: Read + Seek> Scan<'_, R> {
    fn bytes<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut b = [0u8; N];
        self.reader
            .read_exact(&mut b)
            .map_err(|_| self.truncated())?;
        Ok(b)
    }

    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.bytes()?))
    }

    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.bytes()?))
    }

    fn truncated(&self) -> candle_core::Error {
        candle_core::Error::msg(format!(
            "{} is not a readable GGUF file: its header ends early (truncated?)",
            self.source
        ))
    }

    /// Skips `n` bytes, which must be in the file.
    fn skip(&mut self, n: u64) -> Result<()> {
        let here = self.reader.stream_position()?;
        if n > self.size.saturating_sub(here) {
            bail!(
                "{}: its header names {n} bytes at offset {here}, past the end of the file ({} \
                 bytes)",
                self.source,
                self.size
            )
        }
        self.reader.seek(SeekFrom::Current(n as i64))?;
        Ok(())
    }

    /// A string, read only when short (a metadata key); longer ones are skipped and returned
    /// empty.
    fn string(&mut self) -> Result<String> {
        let len = self.u64()?;
        if len > 256 {
            self.skip(len)?;
            return Ok(String::new());
        }
        let mut b = vec![0u8; len as usize];
        self.reader
            .read_exact(&mut b)
            .map_err(|_| self.truncated())?;
        Ok(String::from_utf8_lossy(&b).into_owned())
    }

    fn skip_value(&mut self, kind: u32, depth: usize) -> Result<()> {
        if depth > MAX_DEPTH {
            bail!(
                "{}: its metadata nests arrays more than {MAX_DEPTH} deep",
                self.source
            )
        }
        match fixed_size(kind) {
            Some(n) => self.skip(n),
            None if kind == 8 => {
                let len = self.u64()?;
                self.skip(len)
            }
            None if kind == 9 => {
                let inner = self.u32()?;
                let len = self.u64()?;
                match fixed_size(inner) {
                    Some(n) => self.skip(len.saturating_mul(n)),
                    None => {
                        // Each element takes at least 8 bytes (a length or a type and a length).
                        let here = self.reader.stream_position()?;
                        if len > self.size.saturating_sub(here) / 8 {
                            bail!(
                                "{}: an array of its metadata claims {len} elements, more than \
                                 the file holds",
                                self.source
                            )
                        }
                        for _ in 0..len {
                            self.skip_value(inner, depth + 1)?;
                        }
                        Ok(())
                    }
                }
            }
            None => bail!("{}: unknown metadata value type {kind}", self.source),
        }
    }
}

/// Bytes of a GGUF value of a fixed-size type.
fn fixed_size(kind: u32) -> Option<u64> {
    Some(match kind {
        0 | 1 | 7 => 1,
        2 | 3 => 2,
        4..=6 => 4,
        10..=12 => 8,
        _ => return None,
    })
}
